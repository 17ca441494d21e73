"""Experiment grids: ``intentrec experiment FILE.yaml`` (see docs/training.md, "Experiments").

- :mod:`.spec`: the typed experiment file;
- :mod:`.plan`: grid expansion, run ids, done/todo/stale status, settings checks;
- :mod:`.records`: one JSON record per finished run;
- :mod:`.runner`: trains what is missing (resumable), writes records and the report;
- :mod:`.report`: Markdown, CSV and PNG results from the records.
"""

from intentrec.experiments.plan import RunSpec, expand, make_run_id
from intentrec.experiments.runner import (
    Experiment,
    RunOptions,
    describe,
    report_only,
    reproduce_runs,
    run_experiment,
)
from intentrec.experiments.spec import ExperimentSpec, load_spec

__all__ = [
    "Experiment",
    "ExperimentSpec",
    "RunOptions",
    "RunSpec",
    "describe",
    "expand",
    "load_spec",
    "make_run_id",
    "report_only",
    "reproduce_runs",
    "run_experiment",
]
