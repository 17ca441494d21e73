"""The scores of items added while serving (``POST /v1/items``), calibrated as evaluation calibrates cold items.

``intentrec evaluate RUN --cold-start F`` puts the cold items' scores next to the warm items' with
:func:`intentrec.models.cold_start.cold_item_scores`: per session, a cold item's score — the text
cosine of the session's mean text vector to the item's (``text_weight`` 1, the default), or its blend
with the model's score of the row placed from its text — is z-scored among the cold items and mapped
onto the session's scores of the warm items: their mean and standard deviation (``moments``) or their
quantiles. There the cold items are ~10% of the catalogue drawn at random, so their statistics stand
for the catalogue's. A server's added items are a few, added one at a time, and no random draw: one
item has no standard deviation, two always get z = ±0.71, and an item's score would move whenever
another is added. So here a cold score is z-scored (or ranked) against the **trained catalogue put
through the same pipeline** — every trained item's text cosine, and the model's score of the row its
text is placed at, as if it were cold. That is the evaluation's calibration with the catalogue as the
cold population: the same numbers when the added items are the catalogue's texts again (tested), and
an added item's score depends on the session and its text only.

Per batch only what the options need is computed, vectorised over the batch (no loop over items):

* the session's text vector: the mean of its items' text vectors (``embedding_bag``), normalised;
* ``moments`` with text weight 1 (the default): the cosines to the added items ``[B, m]``, and the
  trained items' cosine mean and variance in closed form from their text vectors' mean and covariance
  (``ŝ·x̄``, ``ŝᵀΣŝ``), so the ``[B, n]`` cosines are never formed;
* ``quantiles``, or a text weight below 1: the ``[B, n]`` reference itself (the cosines to every trained
  item, and/or the model's scores of every trained item's placed row: a second scoring pass), then
  ranks (``searchsorted``) or the blend's spread;
* the warm statistics: from the session's ``[B, n]`` scores (two passes of sums; quantiles: numpy's
  sort, much faster on a CPU thread than torch's), or — under a FAISS index, which only
  returns a top-K — in closed form from the item table's mean and covariance (inner products).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import IntentrecError
from intentrec.models.base import BackboneOutput, SessionModel
from intentrec.models.cold_start import ColdScoringConfig

#: z-scores closer than this count as tied when ranking against the reference (float32 noise between
#: two products of the same vectors: an added twin of a trained item ties with it)
_TIE = 1e-5
_CHUNK = 65_536


def linear_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean ``[d]`` and covariance ``[d, d]`` (unbiased, as ``torch.std``) of the rows of ``x``
    ``[n, d]``, so that ``u·mean`` and ``uᵀ cov u`` are the mean and variance of ``x u`` (float64, in chunks)."""
    n = x.shape[0]
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, n, _CHUNK):
        total += x[start : start + _CHUNK].double().sum(0)
    mean = total / max(n, 1)
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, n, _CHUNK):
        centred = x[start : start + _CHUNK].double() - mean
        cov += centred.T @ centred
    return mean.float(), (cov / max(n - 1, 1)).float()


def _quadratic(u: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``uᵢᵀ M uᵢ`` per row ``[B, 1]``."""
    return ((u @ matrix) * u).sum(1, keepdim=True).clamp_min(0)


def _z(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std.clamp_min(1e-12)


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row mean and unbiased standard deviation ``[B, 1]`` of ``x`` ``[B, n]``: the numbers of
    ``x.mean(1)`` and ``x.std(1)`` in a fraction of the time (on one CPU thread, 32 × 12,101 scores:
    torch's ~3 ms, this ~0.3 ms). One pass of sums (no ``[B, n]`` temporary); rows whose mean is
    so large against their spread that ``Σx² − (Σx)²/n`` would cancel get two passes."""
    n = x.shape[1]
    total = x.sum(1, keepdim=True)
    mean = total / n
    var = ((torch.linalg.vecdot(x, x).unsqueeze(1) - total * mean) / max(n - 1, 1)).clamp_min(0)
    if bool((mean * mean > 1e3 * var).any()):
        centred = x - mean
        var = torch.linalg.vecdot(centred, centred).unsqueeze(1) / max(n - 1, 1)
    return mean, var.sqrt()


def sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` in ascending order (numpy's sort on a CPU: torch's took ~30–50 ms for 32 ×
    12,101 scores on one thread, numpy's ~1.5 ms)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.contiguous().numpy(), axis=1))
    return x.sort(1).values


class ColdScorer:
    """What one served run keeps to calibrate its added items' scores (module doc).

    Built at start-up from the trained catalogue's text vectors ``text`` ``[n, w]`` (unit length, the
    map's encoder and template; needed when ``text_weight > 0``), its rows placed from those texts
    ``placed`` ``[n, d']`` (when ``text_weight < 1``) and, where the warm scores are the inner products
    ``session · item_table`` (a FAISS index's; a backbone scoring by plain dot product), that
    ``item_table``: their mean and deviation then come in closed form. ``add`` appends the added items' rows and text vectors (in the model thread, before
    the catalogue publishes them); a batch scores the first ``m`` of them.
    """

    def __init__(
        self,
        how: ColdScoringConfig,
        num_trained: int,
        *,
        text: torch.Tensor | None = None,
        placed: torch.Tensor | None = None,
        item_table: torch.Tensor | None = None,
        encoder: object | None = None,
        device: torch.device | str = "cpu",
    ):
        if how.calibration == "none":
            raise IntentrecError("calibration none ranks the placed rows as they are: no ColdScorer")
        self.how = how
        self.num_trained = num_trained
        self.encoder = encoder
        w = how.text_weight
        self.uses_text, self.uses_rows = w > 0, w < 1
        # the [B, n] reference is needed for ranks (quantiles) and for the spread of a blend
        self.explicit = how.calibration == "quantiles" or (self.uses_text and self.uses_rows)
        with torch.inference_mode():
            if self.uses_text:
                if text is None or text.shape[0] != num_trained:
                    raise IntentrecError(f"calibrated cold scores need the {num_trained} trained items' text vectors")
                text = text.detach().float().to(device)
                self.text = torch.cat([text.new_zeros(1, text.shape[1]), text])  # row 0: the padding index
                if not self.explicit:
                    self.text_mean, self.text_cov = linear_moments(text)
                self.added_text = text.new_zeros(0, text.shape[1])
            if self.uses_rows:
                if placed is None or placed.shape[0] != num_trained:
                    raise IntentrecError(f"calibrated cold scores need the {num_trained} trained items' placed rows")
                self.rows = placed.detach().float().to(device)  # the trained items' placed rows, then the added ones'
            self.inner_products = item_table is not None
            if self.inner_products:
                self.item_mean, self.item_cov = linear_moments(item_table.detach().float().to(device))

    # ------------------------------------------------------------------ added items
    def text_vectors(self, texts: list[str]) -> torch.Tensor:
        """Unit-length text vectors ``[m, w]`` of added items' texts, with the catalogue's encoder."""
        if self.encoder is None:
            raise IntentrecError("the cold-start map has no text encoder")
        vectors = np.asarray(self.encoder.encode(list(texts), normalize=True), dtype=np.float32)  # type: ignore[attr-defined]
        return torch.from_numpy(vectors).to(self.text.device)

    def add(self, rows: torch.Tensor, text: torch.Tensor | None) -> None:
        with torch.inference_mode():
            if self.uses_text:
                if text is None or text.shape[1] != self.text.shape[1]:
                    raise IntentrecError("an added item's text vector has the wrong width")
                self.added_text = torch.cat([self.added_text, text.float().to(self.added_text.device)])
            if self.uses_rows:
                self.rows = torch.cat([self.rows, rows.float().to(self.rows.device)])

    # ------------------------------------------------------------------ scoring (model thread)
    def session_text(self, batch: SessionBatch) -> torch.Tensor:
        """Each session's mean text vector, normalised ``[B, w]`` (LLMSeqSim ``pooling: mean``)."""
        pooled = F.embedding_bag(batch.items, self.text, mode="mean", padding_idx=0)
        return F.normalize(pooled, dim=1)

    def exact(
        self, model: SessionModel, output: BackboneOutput, batch: SessionBatch, warm: torch.Tensor, m: int
    ) -> torch.Tensor:
        """Calibrated scores ``[B, m]`` of the first ``m`` added items, against the sessions' scores
        ``warm`` ``[B, n]`` of the trained items."""
        n, w = self.num_trained, self.how.text_weight
        text_ref = rows_ref = None  # the [B, n] references, where formed
        if self.uses_text:
            s = self.session_text(batch)
            if self.explicit:
                text_ref = s @ self.text[1:].T
                text_mean, text_std = mean_std(text_ref)
            else:  # moments of the cosines from the text vectors' mean and covariance
                text_mean, text_std = (s @ self.text_mean).unsqueeze(1), _quadratic(s, self.text_cov).sqrt()
            z_text = _z(s @ self.added_text[:m].T, text_mean, text_std)
        if self.uses_rows:
            scores = model.score_with(output, self.rows[: n + m]).float()
            rows_ref = scores[:, :n]
            rows_mean, rows_std = mean_std(rows_ref)
            z_rows = _z(scores[:, n:], rows_mean, rows_std)
        if self.how.calibration == "moments":
            if not self.uses_rows:
                cold = z_text
            elif not self.uses_text:
                cold = z_rows
            else:  # the blend's spread over the reference, from the correlation of its two parts
                assert text_ref is not None and rows_ref is not None
                centred = rows_ref - rows_mean
                corr = torch.linalg.vecdot(centred, text_ref).unsqueeze(1) / (max(n - 1, 1) * rows_std * text_std)
                spread = ((1 - w) ** 2 + w**2 + 2 * w * (1 - w) * corr.clamp(-1, 1)).clamp_min(1e-12).sqrt()
                cold = ((1 - w) * z_rows + w * z_text) / spread
            mean, std = self._warm_moments(output.session) if self.inner_products else mean_std(warm)
            return cold * std + mean
        # quantiles: the cold item's quantile among the reference → the warm score at that quantile
        parts = [(w, z_text, text_ref, text_mean, text_std)] if self.uses_text else []
        if self.uses_rows:
            parts.append((1 - w, z_rows, rows_ref, rows_mean, rows_std))
        cold = sum(weight * z for weight, z, *_ in parts)
        ref = sum(weight * _z(r, mean, std) for weight, _, r, mean, std in parts)
        return self._quantiles(cold, ref, warm)  # type: ignore[arg-type]

    def linear(self, session: torch.Tensor, batch: SessionBatch, m: int) -> torch.Tensor:
        """As :meth:`exact` for ``moments`` of the text similarity, the warm scores being the inner products
        ``session · item_table`` (a FAISS index's), their mean and deviation in closed form."""
        if not self.inner_products or self.explicit or self.uses_rows:
            raise IntentrecError(
                "under a FAISS index only moments of the text similarity (text weight 1) are calibrated"
            )
        s = self.session_text(batch)
        z = _z(s @ self.added_text[:m].T, (s @ self.text_mean).unsqueeze(1), _quadratic(s, self.text_cov).sqrt())
        mean, std = self._warm_moments(session)
        return z * std + mean

    def _warm_moments(self, session: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and deviation ``[B, 1]`` of the inner products ``session · item_table`` over the trained items."""
        u = session.float()
        return (u @ self.item_mean).unsqueeze(1), _quadratic(u, self.item_cov).sqrt()

    def _quantiles(self, cold: torch.Tensor, ref: torch.Tensor, warm: torch.Tensor) -> torch.Tensor:
        """Mid-rank of each cold score among the reference (an item tied with one trained item takes its
        rank) as a quantile, and the warm score at that quantile (the reference is the warm items)."""
        ordered_ref = sorted_rows(ref)
        below = torch.searchsorted(ordered_ref, (cold - _TIE).contiguous())
        upto = torch.searchsorted(ordered_ref, (cold + _TIE).contiguous(), right=True)
        ordered = sorted_rows(warm)
        at = ((below + upto).double() * (ordered.shape[1] / (2 * ordered_ref.shape[1]))).long()
        return ordered.gather(1, at.clamp_(0, ordered.shape[1] - 1))
