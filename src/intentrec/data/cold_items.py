"""Cold-start items: a seeded fraction of the catalogue hidden from training, ranked later from text only.

``choose_cold_items(dataset, fraction, seed)`` draws ``round(fraction · num_items)`` items uniformly
(``numpy.random.default_rng(seed)``) among the items that have a title — an item without text could
not be placed from text — so the set depends on the dataset, the fraction and the seed only.

``ColdStartView(dataset, cold)`` is the dataset as a model trained without those items sees it; it
answers every question a model or the trainer asks of a dataset (``examples``, ``sessions``,
``train_counts``), so ``prepare`` (a global graph, popularity) cannot see a cold item's clicks either:

* cold items are removed from every input session and prefix, in every split (the model never
  learnt them, so it cannot read them; ``A X B`` with cold ``X`` reads as ``A B``), and an example
  whose prefix is then empty is dropped;
* ``examples(split)`` also drops the examples whose target is cold: training, validation (model
  selection never sees a cold target) and the test metrics written at the end of training are over
  warm targets only;
* ``examples_with_cold_targets(split)`` keeps them: what ``intentrec evaluate RUN --cold-start F``
  ranks, with the cold items' table rows placed from their text;
* ``train_counts()`` is zero for cold items.

Texts are not interactions: a method's per-example text features (LLM4SBR's views, computed from the
dataset's prefixes) may still include a cold item's title.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from intentrec.data.dataset import ExampleSet, PreparedDataset
from intentrec.errors import DataError, IntentrecError

RULE = "round(fraction * num_items) items drawn uniformly (numpy default_rng(seed)) among the items with a title"


@dataclass(frozen=True)
class ColdItems:
    fraction: float
    seed: int
    indices: np.ndarray  # int64, sorted item indices 1..n
    num_items: int

    def mask(self) -> np.ndarray:
        """Bool ``[num_items + 1]`` by item index (index 0, padding, is never cold)."""
        out = np.zeros(self.num_items + 1, dtype=bool)
        out[self.indices] = True
        return out

    def to_json(self, dataset: PreparedDataset) -> dict[str, Any]:
        ids = dataset.item_ids()
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "rule": RULE,
            "num_items": self.num_items,
            "cold_items": len(self.indices),
            "item_indices": self.indices.tolist(),
            "item_ids": [ids[i - 1] for i in self.indices],
        }

    def check_recorded(self, path: Path) -> None:
        """The set recorded at training time (``cold_items.json``) must be the one drawn now."""
        if not path.is_file():
            return
        try:
            recorded = json.loads(path.read_text(encoding="utf-8")).get("item_indices")
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc}", path=path) from None
        if recorded != self.indices.tolist():
            raise DataError(
                f"the cold items recorded by the run differ from the ones drawn now (fraction {self.fraction}, "
                f"seed {self.seed}); was the dataset or intentrec changed since training?",
                path=path,
            )


def choose_cold_items(dataset: PreparedDataset, fraction: float, seed: int = 0) -> ColdItems:
    """The seeded cold item set (module doc); an error naming the dataset when there are too few titled items."""
    if not 0 < fraction < 1:
        raise IntentrecError(f"cold_start must be a fraction of the items in (0, 1), got {fraction}")
    n = dataset.num_items
    count = int(round(fraction * n))
    titled = np.flatnonzero([t is not None and t.strip() != "" for t in dataset.titles()]) + 1
    if count < 1:
        raise IntentrecError(f"cold_start={fraction} of {n} items hides no item; use a larger fraction")
    if count > len(titled):
        raise DataError(
            f"cold_start={fraction} needs {count} items with a title, but only {len(titled)} of {n} items have "
            "one (cold items are ranked from their text)",
            path=dataset.path,
        )
    chosen = np.random.default_rng(seed).choice(titled, size=count, replace=False)
    return ColdItems(float(fraction), int(seed), np.sort(chosen).astype(np.int64), n)


def without_items(examples: ExampleSet, hidden: np.ndarray, *, drop_hidden_targets: bool) -> ExampleSet:
    """``examples`` with the items where ``hidden`` (bool by item index) removed from every prefix;
    examples left with an empty prefix, and (``drop_hidden_targets``) those with a hidden target, dropped."""
    lengths = examples.lengths
    row_of_value = np.repeat(np.arange(len(examples)), lengths)
    kept_value = ~hidden[examples.values]
    new_lengths = np.bincount(row_of_value[kept_value], minlength=len(examples))
    kept_row = new_lengths > 0
    if drop_hidden_targets:
        kept_row &= ~hidden[examples.targets]
    values = examples.values[kept_value & kept_row[row_of_value]]
    offsets = np.concatenate([[0], np.cumsum(new_lengths[kept_row])]).astype(np.int64)
    return ExampleSet(examples.split, examples.example_ids[kept_row], values, offsets, examples.targets[kept_row])


class ColdStartView(PreparedDataset):
    """The dataset without the interactions of ``cold`` items (module doc). Same folder, same identity."""

    def __init__(self, dataset: PreparedDataset, cold: ColdItems):
        super().__init__(dataset.path)
        if cold.num_items != self.num_items:
            raise DataError(
                f"cold items drawn for {cold.num_items} items, dataset has {self.num_items}", path=self.path
            )
        self.cold = cold
        self._hidden = cold.mask()

    def examples(self, split: str) -> ExampleSet:
        return without_items(super().examples(split), self._hidden, drop_hidden_targets=True)

    def examples_with_cold_targets(self, split: str) -> ExampleSet:
        return without_items(super().examples(split), self._hidden, drop_hidden_targets=False)

    def sessions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        values, offsets = super().sessions(split)
        rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        kept = ~self._hidden[values]
        lengths = np.bincount(rows[kept], minlength=len(offsets) - 1)
        return values[kept], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def train_counts(self) -> np.ndarray:
        counts = super().train_counts().copy()
        counts[self.cold.indices - 1] = 0
        return counts


def cold_start_view(dataset: PreparedDataset, fraction: float | None, seed: int) -> PreparedDataset:
    """``dataset`` itself when ``fraction`` is None, else its :class:`ColdStartView`."""
    if fraction is None:
        return dataset
    return ColdStartView(dataset, choose_cold_items(dataset, fraction, seed))


def same_fraction(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)
