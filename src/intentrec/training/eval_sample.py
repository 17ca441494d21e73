"""``train.eval_sample``: validation and test on one seeded sample of examples for every model.

The rows are those of ``intentrec evaluate RUN --sample N --seed S`` (and ``intentrec infer`` /
``intentrec llm-rank --sample N --seed S``): N positions drawn from a split's examples, before a
model's own ``select_examples``, so runs of any backbone or method trained with the same
``train.eval_sample`` and ``train.eval_sample_seed`` are scored on the same examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from intentrec.data.dataset import ExampleSet

if TYPE_CHECKING:
    from intentrec.training.run import TrainedRun


def sample_examples(examples: ExampleSet, sample: int | None, seed: int) -> ExampleSet:
    """The seeded sample of ``sample`` examples (all of them when ``sample`` is None or ≥ their number)."""
    if sample is None:
        return examples
    from intentrec.semantic.infer import select_rows

    return examples.subset(select_rows(len(examples), limit=None, sample=sample, seed=seed))


def evaluated_examples(trained: TrainedRun, split: str) -> ExampleSet:
    """The examples of ``split`` a finished run was validated or tested on (its eval sample, then the
    model's own selection): what its ``metrics.json`` numbers are computed over."""
    cfg = trained.trainer
    examples = sample_examples(trained.dataset.examples(split), cfg.eval_sample, cfg.eval_sample_seed)
    return trained.model.select_examples(examples)
