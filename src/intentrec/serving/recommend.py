"""Next-item recommendations for one session given as original item ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import PreparedDataset
from intentrec.errors import DataError, IntentrecError
from intentrec.models.base import SessionModel


@dataclass
class RecommendedItem:
    rank: int
    item_id: str
    title: str | None
    score: float


@dataclass
class Recommendations:
    session: list[dict[str, str | None]]  # the given items, in click order: {"item_id", "title"}
    items: list[RecommendedItem]

    def to_dict(self) -> dict:
        return {"session": self.session, "recommendations": [asdict(r) for r in self.items]}


def item_columns(dataset: PreparedDataset, item_ids: Sequence[str]) -> list[int]:
    """Column index of each original item id; unknown ids are reported together, by name."""
    lookup = {item_id: col for col, item_id in enumerate(dataset.item_ids())}
    unknown = [i for i in item_ids if i not in lookup]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:10]) + (" …" if len(unknown) > 10 else "")
        raise DataError(
            f"{len(unknown)} unknown item id(s): {shown} (ids are the item_id column of items.parquet)",
            path=dataset.path,
        )
    return [lookup[i] for i in item_ids]


@torch.no_grad()
def recommend(
    model: SessionModel,
    dataset: PreparedDataset,
    item_ids: Sequence[str],
    k: int = 10,
    *,
    max_length: int | None = None,
    exclude_seen: bool = False,
    device: torch.device | str = "cpu",
) -> Recommendations:
    """Top-``k`` next items after the clicks ``item_ids`` (oldest first)."""
    if not item_ids:
        raise IntentrecError("give at least one item id")
    if k < 1:
        raise IntentrecError(f"k must be at least 1, got {k}")
    columns = item_columns(dataset, item_ids)
    history = [c + 1 for c in columns]  # item indices
    if max_length is not None:
        history = history[-max_length:]
    model.eval()
    batch = SessionBatch.from_lists([history]).to(device)
    scores = model.serve_scores(batch)[0].float().cpu()
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    if exclude_seen:
        scores[torch.tensor(columns)] = float("-inf")
    top = torch.topk(scores, min(k, scores.numel()))
    ids, titles = dataset.item_ids(), dataset.titles()
    items = [
        RecommendedItem(rank=r + 1, item_id=ids[c], title=titles[c], score=float(s))
        for r, (s, c) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True))
        if s != float("-inf")
    ]
    session = [{"item_id": ids[c], "title": titles[c]} for c in columns]
    return Recommendations(session=session, items=items)
