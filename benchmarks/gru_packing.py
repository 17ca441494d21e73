"""GRU over right-padded session batches: torch's packed sequences against length buckets (ours).

    python benchmarks/gru_packing.py

Times forward + backward of one GRU (d = 100) on the first 12 shuffled Beauty train batches of 512
(NARM's batch size), then checks that both give the same states and gradients.
"""

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from intentrec.data.dataset import PreparedDataset

torch.set_num_threads(1)


def packed(gru, inputs, lengths):
    p = pack_padded_sequence(inputs, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    s, _ = gru(p)
    return pad_packed_sequence(s, batch_first=True, total_length=inputs.shape[1])[0]


def bucketed(gru, inputs, lengths, first=8):  # the algorithm of intentrec's run_gru, inlined
    B, L, _ = inputs.shape
    lengths = lengths.clamp(min=1)
    parts, order = [], []
    lo, hi = 0, first
    while lo < L:
        rows = torch.nonzero((lengths > lo) & (lengths <= hi)).squeeze(1)
        if rows.numel():
            width = int(lengths[rows].max())
            s, _ = gru(inputs[rows, :width])
            parts.append(nn.functional.pad(s, (0, 0, 0, L - width)))
            order.append(rows)
        lo, hi = hi, hi * 2
    out = torch.cat(parts)[torch.argsort(torch.cat(order))]
    return out * (torch.arange(L, device=inputs.device)[None, :] < lengths[:, None]).unsqueeze(2)


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, prepare_beauty  # noqa: E402

ds = PreparedDataset(prepare_beauty(REPO / "runs" / "bench-backbones-beauty"))
bs = list(ds.examples("train").batches(512, shuffle=True, seed=0))[:12]
torch.manual_seed(0)
gru = nn.GRU(100, 100, batch_first=True)
emb = nn.Embedding(ds.num_items + 1, 100, padding_idx=0)
for name, f in (("packed", packed), ("bucketed", bucketed)):
    t = time.perf_counter()
    for b in bs:
        out = f(gru, emb(b.items), b.lengths)
        out.sum().backward()
    print(name, f"{(time.perf_counter() - t) / len(bs) * 1000:.0f} ms/batch")
b = bs[0]
x = emb(b.items).detach().requires_grad_()
a = packed(gru, x, b.lengths)
ga = torch.autograd.grad(a.pow(2).sum(), [x, gru.weight_hh_l0])
c = bucketed(gru, x, b.lengths)
gc = torch.autograd.grad(c.pow(2).sum(), [x, gru.weight_hh_l0])
print("max |diff| out", (a - c).abs().max().item(), "grads", [(u - v).abs().max().item() for u, v in zip(ga, gc)])
