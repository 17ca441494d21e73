"""MiaSRec: multi-intent-aware session-based recommendation (Choi et al., SIGIR 2024).

Following the authors' ``miasrec.py`` (RecBole): the session's most recent ``max_length`` clicks are
read newest first; a *mean token* (the mean of the session's item vectors) is put in front, so token 0
is the mean and token t ≥ 1 the t-th most recent click. Every token gets
``x_t = e_t + a_t + r_{f_t}`` (item vector, position vector, *frequency* vector of how often the item
occurs in the session, clipped at ``max_repeat``), LayerNorm and dropout, and a bidirectional post-LN
transformer (RecBole's ``TransformerEncoder``: GELU, ``num_layers`` blocks) gives ``c_t``. A highway
keeps each token's own item: ``h_t = g_t ⊙ e_t + (1 − g_t) ⊙ c_t`` with ``g_t = σ(W_h [e_t ; c_t])``.
Each ``h_t`` is one intent. Importance ``γ = entmax_α(w_iᵀ [h_0 ; h_t] + b)`` over the tokens selects
the intents (γ_t > 0); the selected ``z_t = normalise(γ_t h_t)`` score item v with the normalised
item table ``ṽ``: ``β max_t z_tᵀ ṽ / τ + (1 − β) mean_t z_tᵀ ṽ / τ``. In training the table goes
through dropout (``item_dropout``) before it is normalised, as in the code's ``calculate_loss``.

Deviations from the authors' code, on purpose: (1) the code calls ``entmax_bisect`` with
``config['entmax_alpha']``, which its configs never set, so it falls back to α = −1: a dense weighting
that never selects (no γ is 0). We use ``entmax_alpha`` = 1.5 (``entmax_bisect``'s own default, a
sparse α-entmax as the paper describes); α must lie in (1, 2]. (2) The code's max runs over all 50
padded positions, so padding tokens' outputs (and dropped intents, at score 0) enter it; we take the
max over the selected intents only. (3) The code marks the mean token with item id 1 when counting
repeats, so item 1 counts the mean token as one of its repeats; the mean token gets frequency 1 here
and items count only their own clicks. Since ``normalise(γ_t h_t) = normalise(h_t)``, γ only selects;
the importance layer gets no gradient beyond rounding in the code's model as in ours.

Vectors: ``local`` = ``h_1`` (the intent at the last click), ``global`` = ``h_0`` (the mean token's
intent, which attends to the whole session); ``session`` = ``Σ_t γ_t h_t``. The selected intents are
``extras["intents"]`` (``[B, T, d]``, unit length, zero where not selected) with
``extras["selected"]``; they are what the backbone scores. When a method replaces ``session``, the new
vector is scored the same way as a single intent.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.autograd.function import once_differentiable

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.msgat import entmax
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.layers import LengthGroups, PackedTokens, keep_most_recent
from intentrec.models.registry import register_backbone


class MiaSRecConfig(BackboneConfig):
    embedding_dim: int = Field(100, ge=1)
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(2, ge=1)
    inner_size: int = Field(256, ge=1, description="feed-forward width")
    hidden_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    session_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout of the token item vectors")
    item_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout of the item table in training")
    temperature: float = Field(0.07, gt=0)
    beta: float = Field(0.9, ge=0.0, le=1.0, description="weight of the max over intents (paper: 0.7-0.9)")
    entmax_alpha: float = Field(1.5, gt=1.0, le=2.0, description="α of the intent selection")
    max_repeat: int = Field(2, ge=1, description="frequencies above this share one vector")
    max_length: int = Field(50, ge=1, description="most recent clicks read (RecBole's MAX_ITEM_LIST_LENGTH)")
    layer_norm_eps: float = Field(1e-12, gt=0)
    initializer_range: float = Field(0.02, gt=0)


class PostNormBlock(nn.Module):
    """RecBole's ``TransformerLayer``: ``LN(x + Drop(MHA(x)))`` then ``LN(y + Drop(W2 GELU(W1 y)))``."""

    def __init__(self, config: MiaSRecConfig):
        super().__init__()
        d = config.embedding_dim
        if d % config.num_heads:
            raise ValueError(f"embedding_dim {d} is not divisible by num_heads {config.num_heads}")
        self.heads = config.num_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attention_out = nn.Linear(d, d)
        self.attention_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.feed_in = nn.Linear(d, config.inner_size)
        self.feed_out = nn.Linear(config.inner_size, d)
        self.feed_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.attention_dropout = config.attention_dropout

    def forward(self, tokens: torch.Tensor, groups: LengthGroups, real: list[torch.Tensor]) -> torch.Tensor:
        """``tokens`` ``[N, d]`` packed; attention runs per length group (``real``: its key masks)."""
        d = tokens.shape[1]
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        attended = []
        for block, keys in zip(groups.pad(F.linear(tokens, weight, bias)), real, strict=True):
            rows, width = keys.shape
            heads = block.view(rows, width, 3 * self.heads, d // self.heads).transpose(1, 2)
            query, key, value = heads.split(self.heads, dim=1)
            out = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=keys.view(rows, 1, 1, width),
                dropout_p=self.attention_dropout if self.training else 0.0,
            )
            attended.append(out.transpose(1, 2).reshape(rows, width, d))
        tokens = self.attention_norm(tokens + self.dropout(self.attention_out(groups.pack(attended))))
        return self.feed_norm(tokens + self.dropout(self.feed_out(F.gelu(self.feed_in(tokens)))))


def newest_first(items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Right-padded rows reversed within their length: column 0 is the last click."""
    steps = torch.arange(items.shape[1], device=items.device).unsqueeze(0)
    index = (lengths.unsqueeze(1) - 1 - steps).clamp(min=0)
    return items.gather(1, index).masked_fill(steps >= lengths.unsqueeze(1), 0)


@register_backbone("miasrec")
class MiaSRec(Backbone):
    """``local`` = intent at the last click, ``global`` = the mean token's intent, ``session`` = Σ γ_t h_t."""

    Config: ClassVar[type[BackboneConfig]] = MiaSRecConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # The authors' RecBole run: Adam lr 1e-3, batch 1024, no weight decay or schedule, early stop after 5.
    default_train: ClassVar[dict] = {
        "lr": 0.001,
        "batch_size": 1024,
        "l2": 0.0,
        "lr_decay_step": 0,
        "lr_decay_gamma": 1.0,
        "patience": 5,
    }

    def __init__(self, num_items: int, config: MiaSRecConfig):
        super().__init__(num_items, config)
        self.config: MiaSRecConfig
        d = config.embedding_dim
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.positions = nn.Embedding(config.max_length + 1, d)  # + 1: the mean token
        self.frequencies = nn.Embedding(config.max_repeat + 1, d, padding_idx=0)
        self.input_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.input_dropout = nn.Dropout(config.hidden_dropout)
        self.session_dropout = nn.Dropout(config.session_dropout)
        self.item_dropout = nn.Dropout(config.item_dropout)
        self.blocks = nn.ModuleList(PostNormBlock(config) for _ in range(config.num_layers))
        self.highway = nn.Linear(2 * d, d)
        self.importance = nn.Linear(2 * d, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg = self.config
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.dim)
            self.id_table.uniform_(-bound, bound)
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    module.weight.normal_(0.0, cfg.initializer_range)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
                if isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
            self.frequencies.weight[0].zero_()

    def scoring_table(self, vectors: torch.Tensor | None = None) -> torch.Tensor:
        if vectors is None:
            return self.item_table()
        return F.normalize(self.item_dropout(vectors), dim=-1)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        cfg = self.config
        items, lengths = keep_most_recent(batch.items, batch.lengths, cfg.max_length)
        recent = newest_first(items, lengths)  # [B, L]
        clicks = recent > 0
        mask = F.pad(clicks, (1, 0), value=True)  # [B, T]: the mean token, then the clicks
        # Every per-token layer runs on the N real tokens only, packed row by row (on Beauty N ≈ B · 9
        # while T is 51 in nearly every batch of 1024); attention runs per group of similar length.
        packing = PackedTokens(mask)
        groups = LengthGroups(packing)
        steps = torch.arange(packing.num_tokens, device=mask.device) - packing.starts.index_select(0, packing.rows)
        # a group's padding slots copy their row's last token, whose step is then not the slot's
        real = [block == torch.arange(block.shape[1], device=block.device) for block in groups.pad(steps)]
        vectors = self.embed_items(packing.pack(F.pad(recent, (1, 0))))  # [N, d], zero at the mean tokens
        mean = packing.sum_per_row(vectors) / lengths.clamp(min=1).unsqueeze(1).to(vectors.dtype)
        tokens = self.session_dropout(vectors.index_copy(0, packing.starts, mean))
        repeats = ((recent.unsqueeze(1) == recent.unsqueeze(2)) & clicks.unsqueeze(1)).sum(-1)
        repeats = F.pad(repeats.masked_fill(~clicks, 0), (1, 0), value=1).clamp(max=cfg.max_repeat)
        inputs = tokens + self.positions(steps) + self.frequencies(packing.pack(repeats))
        hidden = self.input_dropout(self.input_norm(inputs))
        for block in self.blocks:
            hidden = block(hidden, groups, real)
        gate = torch.sigmoid(self.highway(torch.cat([tokens, hidden], dim=-1)))
        intents = gate * tokens + (1 - gate) * hidden  # [N, d]
        first = intents.index_select(0, packing.starts)  # h_0 of each row
        paired = torch.cat([first.index_select(0, packing.rows), intents], dim=-1)
        importance = packing.unpack(self.importance(paired).squeeze(-1)).masked_fill(~mask, float("-inf"))
        gamma = entmax(importance, importance.new_full((importance.shape[0], 1), cfg.entmax_alpha))  # [B, T]
        selected = gamma > 0
        weighted = packing.pack(gamma).unsqueeze(-1) * intents
        session = packing.sum_per_row(weighted)
        # h_1 of each row; a session without clicks has none (zero)
        local = intents.index_select(0, (packing.starts + 1).clamp(max=packing.num_tokens - 1))
        local = local * (lengths > 0).unsqueeze(1).to(local.dtype)
        return BackboneOutput(
            session=session,
            vectors={"local": local, "global": first},
            # ``intent_session`` is the session tensor itself: a method that replaces ``session`` is seen
            # by identity and scored as one intent.
            extras={
                "intents": packing.unpack(F.normalize(weighted, dim=-1)),
                "selected": selected,
                "intent_session": session,
            },
        )

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        """``β max + (1 − β) mean`` of the selected intents' cosines / τ (a method's vector: one intent)."""
        packed, sizes, mean_scale, order, position = self._packed_intents(output)
        scores = _intent_scores(packed, table, sizes, self.config.beta / self.config.temperature, mean_scale, None)
        return scores.index_select(0, position)  # the rows come sorted by number of intents: back to batch order

    def score_loss_with(self, output: BackboneOutput, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``F.cross_entropy(score_with(output, table), targets)``, fused with the scoring."""
        packed, sizes, mean_scale, order, _ = self._packed_intents(output)
        # the mean over rows does not depend on their order: the targets follow the sorted rows
        targets = targets.index_select(0, order)
        return _intent_scores(packed, table, sizes, self.config.beta / self.config.temperature, mean_scale, targets)

    def _packed_intents(
        self, output: BackboneOutput
    ) -> tuple[torch.Tensor, list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The selected intents packed by rank: rank 0 (each session's first selected intent) of every
        session, then rank 1 of those with at least two, …, the sessions sorted by their number of
        intents (descending) so that every rank's sessions are a prefix of that order.

        Returns ``packed`` ``[S, d]``, the rank sizes, ``(1 − β) / (τ · count)`` per sorted session,
        ``order`` (sorted position → batch row) and ``position`` (batch row → sorted position).
        """
        cfg = self.config
        if output.session is output.extras["intent_session"]:
            intents, selected = output.extras["intents"], output.extras["selected"]
        else:
            intents = F.normalize(output.session, dim=-1).unsqueeze(1)
            selected = torch.ones(intents.shape[:2], dtype=torch.bool, device=intents.device)
        batch, width, d = intents.shape
        counts = selected.sum(1)
        order = torch.argsort(counts, descending=True, stable=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(batch, device=order.device)
        most = int(counts.max()) if batch else 0
        # sizes[k] = number of sessions with more than k selected intents
        sizes = batch - torch.bincount(counts, minlength=most + 1)[:most].cumsum(0)
        starts = sizes.cumsum(0) - sizes
        rows, tokens = selected.nonzero(as_tuple=True)
        rank = (selected.cumsum(1) - 1)[rows, tokens]
        source = torch.empty_like(rows)
        source[starts[rank] + position[rows]] = rows * width + tokens
        packed = intents.reshape(batch * width, d).index_select(0, source)
        mean_scale = (1 - cfg.beta) / (cfg.temperature * counts.index_select(0, order).to(intents.dtype))
        return packed, sizes.tolist(), mean_scale, order, position


#: a freed workspace per (device, dtype), reused by the next forward pass on CPU (see ``_workspace``)
_spare_workspaces: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _workspace(numel: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised flat buffer of at least ``numel`` entries; hand it back with ``_release``.

    glibc serves blocks above 32 MiB with a fresh ``mmap`` (``training/allocator.py``), so the
    ``[S, n]`` logits (≈ 450 MB on Beauty at batch 1024) and the ``[B, n]`` buffers would page-fault
    in again every step; on CPU the last backward pass's workspace is kept and reused instead (about
    10 % of a training step). A workspace in use is out of the pool, so nested or concurrent forward
    passes each get their own, and one whose backward pass never runs is simply freed.
    """
    if like.device.type != "cpu":
        return like.new_empty(numel)
    spare = _spare_workspaces.pop((like.device, like.dtype), None)
    return spare if spare is not None and spare.numel() >= numel else like.new_empty(numel)


def _release(workspace: torch.Tensor) -> None:
    if workspace.device.type == "cpu":
        _spare_workspaces[(workspace.device, workspace.dtype)] = workspace


def _intent_scores(
    packed: torch.Tensor,
    table: torch.Tensor,
    sizes: list[int],
    max_weight: float,
    mean_scale: torch.Tensor,
    targets: torch.Tensor | None,
) -> torch.Tensor:
    """Sorted scores ``[B, n]`` (``targets`` None) or their mean cross-entropy: see ``_IntentScores``."""
    backward = torch.is_grad_enabled() and (packed.requires_grad or table.requires_grad)
    return _IntentScores.apply(packed, table, sizes, max_weight, mean_scale, targets, backward)


class _IntentScores(torch.autograd.Function):
    """MiaSRec's scores ``β/τ · max_k L_k + (1 − β)/(τ·count) · Σ_k L_k`` of packed intents, where
    ``L = packed @ table.T`` ``[S, n]``, optionally fused with the cross-entropy (``targets`` given);
    ``max_weight`` is β/τ, ``mean_scale`` the (1 − β)/(τ·count) of each (sorted) session, and
    ``backward`` whether a backward pass may follow (if not, the workspace goes back at once).

    The max runs rank by rank over contiguous row blocks (each rank's sessions are a prefix of the
    sorted batch), in place; the mean is a ``[B, n]`` product with each session's summed intents. The
    backward pass writes ``d loss / d L`` into the buffer of ``L`` (the max's gradient goes to the
    intent that attains it; exact ties, which a float max practically never has, give each tied intent
    the whole gradient), the mean's gradient folded in, so the table and the intents get it from two
    products with that one ``[S, n]`` buffer. All large buffers are views of one workspace: ``L``,
    the running max, the loss's exps (fused) and the mean's gradient. One backward pass per forward
    (no double backward).
    """

    @staticmethod
    def forward(ctx, packed, table, sizes, max_weight, mean_scale, targets, backward):
        batch, rows, n = (sizes[0] if sizes else 0), packed.shape[0], table.shape[0]
        fused = targets is not None
        parts = [rows * n, batch * n, batch * n] + ([batch * n] if fused else [])
        workspace = _workspace(sum(parts), packed)
        views = workspace[: sum(parts)].split(parts)
        logits, best, spare = views[0].view(rows, n), views[1].view(batch, n), views[2].view(batch, n)
        torch.mm(packed, table.t(), out=logits)  # [S, n]
        best.copy_(logits[:batch])
        summed = packed[:batch].clone()
        start = batch
        for size in sizes[1:]:
            torch.maximum(best[:size], logits[start : start + size], out=best[:size])
            summed[:size] += packed[start : start + size]
            start += size
        # the scores leave the function unless the loss is fused: then they live in the workspace
        scores = views[3].view(batch, n) if fused else packed.new_empty(batch, n)
        torch.addmm(best, summed * mean_scale.unsqueeze(1), table.t(), beta=max_weight, out=scores)
        ctx.sizes, ctx.max_weight, ctx.fused = sizes, max_weight, fused
        ctx.save_for_backward(packed, table, mean_scale, targets)
        # Kept on ctx, not saved: backward overwrites them, and nothing else holds them.
        ctx.workspace, ctx.logits, ctx.best, ctx.spare = workspace, logits, best, spare
        ctx.exps = ctx.total = None
        if fused:
            picked = scores.gather(1, targets.unsqueeze(1))
            peak = scores.amax(dim=1, keepdim=True)
            exps = scores.sub_(peak).exp_()  # in place: the scores are not needed again
            total = exps.sum(dim=1, keepdim=True)
            ctx.exps, ctx.total = exps, total
            scores = (total.log() + peak - picked).mean()
        if not backward:  # no backward pass will come
            ctx.workspace = ctx.logits = ctx.best = ctx.spare = ctx.exps = None
            _release(workspace)
        return scores

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        packed, table, mean_scale, targets = ctx.saved_tensors
        logits, best, mean_grad = ctx.logits, ctx.best, ctx.spare
        if logits is None:
            raise RuntimeError("MiaSRec's intent scoring supports one backward pass per forward")
        ctx.logits = ctx.best = ctx.spare = None
        batch = best.shape[0]
        if ctx.fused:
            # d loss / d scores = (softmax − one_hot) · grad / B, in the buffer of the exps
            grad_scores = ctx.exps.mul_(grad / (batch * ctx.total))
            ctx.exps = ctx.total = None
            grad_scores[torch.arange(batch, device=grad_scores.device), targets] -= grad / batch
            torch.mul(grad_scores, mean_scale.unsqueeze(1), out=mean_grad)  # the mean's share, every rank
            max_grad = grad_scores.mul_(ctx.max_weight)
        else:
            torch.mul(grad, mean_scale.unsqueeze(1), out=mean_grad)
            max_grad = grad * ctx.max_weight
        start = 0
        for size in ctx.sizes:  # d loss / d L_k = β/τ · [L_k is the max] · g + mean's share, in place
            block = logits[start : start + size]
            block.eq_(best[:size])
            torch.addcmul(mean_grad[:size], block, max_grad[:size], out=block)
            start += size
        grad_packed = logits @ table if ctx.needs_input_grad[0] else None
        grad_table = (packed.t() @ logits).t() if ctx.needs_input_grad[1] else None
        _release(ctx.workspace)
        ctx.workspace = None
        return grad_packed, grad_table, None, None, None, None, None
