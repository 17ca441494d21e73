"""Train the nine backbones on Beauty (llm4sbr-beauty protocol), three seeds; write the results table.

A thin front end to ``intentrec experiment experiments/backbones-beauty.yaml``: the grid, its
settings and its records live in that file, and the run folders and records are shared with the
LLM4SBR and LLM-DMsRec Beauty grids (a backbone-alone run is trained once and counted in each).
Model selection is on the validation split; test metrics are those of the validation-selected
epoch. Resumable: finished runs are skipped and an interrupted run resumes from its last epoch.

    python benchmarks/backbones_beauty.py                        # everything still missing
    python benchmarks/backbones_beauty.py --models srgnn stamp --seeds 0
    python benchmarks/backbones_beauty.py --report-only          # rebuild the table from the records

Writes docs/results/backbones-beauty.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import os

from _common import REPO

SPEC = "experiments/backbones-beauty.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="backbones to train (default: all nine)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds to train (default: 0 1 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    parser.add_argument("--max-runs", type=int, help="stop after training this many new runs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table")
    args = parser.parse_args()

    from intentrec.errors import IntentrecError
    from intentrec.experiments import Experiment, RunOptions, report_only, run_experiment

    os.chdir(REPO)  # the experiment file's paths are relative to the repository root
    try:
        experiment = Experiment.load(SPEC)
        if args.report_only:
            _, written = report_only(experiment)
        else:
            models = args.models or ["*"]
            seeds = [str(s) for s in args.seeds] if args.seeds else ["*"]
            only = [f"beauty/{m}/default/s{s}" for m in models for s in seeds]
            options = RunOptions(only=only, threads=args.threads, max_runs=args.max_runs)
            written = run_experiment(experiment, options).written
    except IntentrecError as exc:
        raise SystemExit(f"error: {exc}") from None
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
