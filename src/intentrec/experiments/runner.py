"""Running an experiment: train the runs that have no record yet, write records, rebuild the report.

Resumable at two levels: a run with a record is skipped; a run without one calls ``train`` with
``resume=True``, so an interrupted training continues from its last completed epoch. Runs execute
seed by seed (every row gets its first seed before any row gets its second), so a grid stopped early
— or chunked with ``max_runs`` — already has one seed of every row.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intentrec.data.identity import DatasetIdentity
from intentrec.errors import DataError, IntentrecError, InUseError
from intentrec.experiments.plan import (
    RunSpec,
    Status,
    check_settings,
    execution_order,
    expand,
    read_record,
    run_status,
    select,
)
from intentrec.experiments.records import (
    COLD_START_KEY,
    build_record,
    build_rerank_record,
    cold_start_entry,
    machine,
    save_record,
    test_ranks_entry,
)
from intentrec.experiments.report import Report, write_report
from intentrec.experiments.significance import RANKS_KEY
from intentrec.experiments.spec import ExperimentSpec, load_spec
from intentrec.io import exclusive_lock

Echo = Callable[[str], None]
RUNNER_LOCK = ".runner.lock"  # in each run folder, held while a runner trains and records the run


@dataclass
class RunOptions:
    only: list[str] | None = None  # fnmatch globs on run ids
    threads: int | None = None  # train.num_threads for every run (does not change results)
    device: str | None = None  # train.device for every run
    max_runs: int | None = None  # stop after this many newly trained runs
    progress: bool | None = None  # per-batch progress bar; None: only on a terminal
    reproduce: bool = False  # retrain finished runs that lack test ranks and a run folder (see reproduce_runs)

    def command(self, spec_file: str) -> str:
        """The command line that reproduces this invocation (recorded in every record)."""
        args = ["intentrec", "experiment", spec_file]
        for pattern in self.only or []:
            args += ["--only", pattern]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.device is not None:
            args += ["--device", self.device]
        if self.max_runs is not None:
            args += ["--max-runs", str(self.max_runs)]
        if self.reproduce:
            args.append("--reproduce")
        return shlex.join(args)


@dataclass
class RunState:
    run: RunSpec
    status: Status
    problems: list[str] = field(default_factory=list)  # why a record is stale
    record: dict[str, Any] | None = None


@dataclass
class Experiment:
    spec: ExperimentSpec
    spec_file: str
    runs: list[RunSpec]
    _identities: dict[str, DatasetIdentity | None] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        spec = load_spec(path)
        return cls(spec, Path(path).as_posix(), expand(spec))

    def state(self, run: RunSpec) -> RunState:
        record = read_record(run.record_path(self.spec.records_dir))
        status, problems = run_status(run, record)
        if status == "done" and record is not None:
            current = self._identity(run.dataset)
            recorded = record.get("dataset") or {}
            if current is not None and not current.matches(recorded):
                status = "stale"
                if recorded.get("fingerprint"):
                    was, now = recorded["fingerprint"], current.fingerprint
                    problems = [f"dataset fingerprint {was[:12]}… → {now[:12]}…"]
                else:
                    was, now = str(recorded.get("manifest_sha256")), current.manifest_sha256
                    problems = [f"dataset manifest sha256 {was[:12]}… → {now[:12]}… (record has no fingerprint)"]
        return RunState(run, status, problems, record)

    def states(self, runs: list[RunSpec] | None = None) -> list[RunState]:
        return [self.state(run) for run in (self.runs if runs is None else runs)]

    def set_identity(self, dataset: str, identity: DatasetIdentity) -> None:
        self._identities[dataset] = identity

    def _identity(self, dataset: str) -> DatasetIdentity | None:
        """The dataset's identity if the folder is prepared already, else None."""
        if dataset not in self._identities:
            from intentrec.data import schema

            folder = self.spec.dataset_dir(dataset)
            prepared = (folder / schema.MANIFEST).is_file()
            self._identities[dataset] = DatasetIdentity.of(folder) if prepared else None
        return self._identities[dataset]

    def report(self) -> Report:
        states = self.states()
        records = {s.run.run_id: s.record for s in states if s.status == "done" and s.record}
        stale = {s.run.run_id: s.problems for s in states if s.status == "stale"}
        return Report(self.spec, self.spec_file, self.runs, records, stale, self._orphans())

    def _orphans(self) -> int:
        folder = Path(self.spec.records_dir)
        if not folder.is_dir():
            return 0
        ids = {run.run_id for run in self.runs}
        found = (p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.json"))
        return sum(run_id not in ids for run_id in found)


# --------------------------------------------------------------------------- dry run


def describe(experiment: Experiment, options: RunOptions, echo: Echo = print) -> list[RunState]:
    """Print every selected run with its status (done / todo / stale); train nothing."""
    spec = experiment.spec
    selected = select(experiment.runs, options.only)
    states = experiment.states(selected)
    counts = {k: sum(s.status == k for s in states) for k in ("done", "todo", "stale")}
    echo(
        f"experiment {spec.name}: {len(states)} runs"
        + (f" selected of {len(experiment.runs)}" if options.only else "")
        + f" — {counts['done']} done, {counts['todo']} to run, {counts['stale']} stale"
    )
    echo(f"  run folders: {spec.runs_dir}   records: {spec.records_dir}   results: {spec.results_dir}/{spec.name}.md")
    for state in states:
        mark = {"done": "done ", "todo": "todo ", "stale": "STALE"}[state.status]
        extra = f"  (record has other settings: {'; '.join(state.problems)})" if state.problems else ""
        paper = "  [PAPER MODE]" if state.run.paper_mode else ""
        if state.run.rerank:
            paper = f"  [re-ranked by {state.run.rerank[1]}; evaluation only]"
        if state.run.needs:
            paper += f"  [ID run {', '.join(state.run.needs)}]"
        echo(f"  {mark} {state.run.run_id}{paper}{extra}")
    todo = [s.run for s in states if s.status == "todo"]
    if options.max_runs is not None and todo:
        now = min(options.max_runs, len(todo))
        echo(f"--max-runs {options.max_runs}: would train {now} of {len(todo)} now")
    for method, reason in check_settings(todo).items():
        echo(f"warning: method '{method}' is not available here ({reason}); its settings are unchecked")
    return states


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    trained: list[str]
    remaining: int  # selected runs still without a record
    written: list[Path]
    busy: list[str] = field(default_factory=list)  # skipped: another process was training them


def _selected(experiment: Experiment, options: RunOptions) -> list[RunSpec]:
    selected = select(experiment.runs, options.only)
    if options.only and not selected:
        raise IntentrecError(f"--only {' '.join(options.only)} matches none of the {len(experiment.runs)} run ids")
    return selected


def run_experiment(experiment: Experiment, options: RunOptions, echo: Echo = print) -> Outcome:
    spec = experiment.spec
    selected = _selected(experiment, options)
    states = experiment.states(selected)
    stale = [s for s in states if s.status == "stale"]
    if stale:
        listed = "\n  ".join(f"{s.run.run_id}: {'; '.join(s.problems)}" for s in stale)
        raise IntentrecError(
            f"{len(stale)} run(s) have records made with other settings than {experiment.spec_file} "
            f"now asks for:\n  {listed}\nDelete those records (in {spec.records_dir}) and run folders "
            f"(in {spec.runs_dir}) to rerun them, or give the changed variant a new name."
        )
    todo = execution_order([s.run for s in states if s.status == "todo"])
    unavailable = check_settings(todo)
    blocked = sorted({r.method for r in todo if r.method in unavailable})
    if blocked:
        reasons = "; ".join(f"{m}: {unavailable[m]}" for m in blocked)
        raise IntentrecError(
            f"method(s) {', '.join(blocked)} not available ({reasons}); run the other runs with --only"
        )
    # --max-runs counts runs trained here: runs another process holds are skipped, not counted.
    limit = options.max_runs
    to_train = len(todo) if limit is None else min(limit, len(todo))
    done_before = [s.record for s in states if s.status == "done" and s.record]
    echo(
        f"experiment {spec.name}: {len(selected)} runs selected, {len(done_before)} done, "
        f"{to_train} to train now" + (f" (--max-runs {limit} of {len(todo)} to do)" if to_train < len(todo) else "")
    )

    _backfill_test_ranks(experiment, [s for s in states if s.status == "done" and s.record], echo)
    _backfill_cold_start(experiment, [s for s in states if s.status == "done" and s.record], echo)
    command = options.command(experiment.spec_file)
    datasets = _Datasets(spec, echo)
    durations = [r["seconds_total"] for r in done_before if r.get("seconds_total")]
    trained: list[str] = []
    written: list[Path] = []
    busy: list[str] = []
    for i, run in enumerate(todo, start=1):
        if len(trained) >= to_train:
            break
        step = f"[{i}/{len(todo)}] {run.run_id}"
        waiting = [r.run_id for r in experiment.runs if r.run_id in run.needs and experiment.state(r).status != "done"]
        if waiting:
            echo(f"{step}: waits for its ID run {', '.join(waiting)} (not finished yet)")
            continue
        unusable = _unusable_inputs(experiment, run.needs)
        if unusable:
            echo(f"{step}: cannot read its ID run: {unusable}")
            continue
        try:
            # Several processes may work through one grid side by side. This lock covers the check,
            # the training and the record, so no run is trained or recorded twice.
            with exclusive_lock(run.run_dir(spec.runs_dir) / RUNNER_LOCK, what=f"run {run.run_id}"):
                if experiment.state(run).status == "done":
                    echo(f"{step}: finished meanwhile by another process")
                    continue
                if run.rerank:
                    record = _rerank(experiment, run, command, echo, step)
                    if record is None:
                        continue
                    save_record(run.record_path(spec.records_dir), record)
                    trained.append(run.run_id)
                    echo(f"{step}: {_summary(record)}")
                    written = write_report(experiment.report())
                    continue
                eta = _eta(durations, min(len(todo) - i + 1, to_train - len(trained)), fresh=bool(trained))
                echo(f"{step}{' [PAPER MODE]' if run.paper_mode else ''}: training{eta}")
                dataset_dir, manifest, identity = datasets.get(run.dataset)
                experiment.set_identity(run.dataset, identity)
                started = time.perf_counter()
                result = _train(run, spec, dataset_dir, options, command, echo)
                record = build_record(
                    run,
                    result,
                    experiment=spec.name,
                    dataset_dir=dataset_dir,
                    manifest=manifest,
                    identity=identity,
                    command=command,
                    wall_seconds=time.perf_counter() - started,
                )
                _attach_test_ranks(record, run.run_dir(spec.runs_dir), echo)
                _attach_cold_start(record, run.run_dir(spec.runs_dir), spec, echo)
                save_record(run.record_path(spec.records_dir), record)
        except InUseError as exc:
            echo(f"{step}: skipped, being trained by {exc.holder}")
            busy.append(run.run_id)
            continue
        if not trained:
            durations = []  # from now on, estimate from this session's runs only
        trained.append(run.run_id)
        durations.append(record.get("seconds_total") or record["wall_seconds"])
        echo(f"{step}: {_summary(record)}")
        written = write_report(experiment.report())
    if not trained:
        written = write_report(experiment.report())
    remaining = sum(s.status != "done" for s in experiment.states(selected))
    return Outcome(trained, remaining, written, busy)


def reproduce_runs(experiment: Experiment, options: RunOptions, echo: Echo = print) -> Outcome:
    """Retrain finished runs whose records lack per-example test ranks and whose run folder is gone
    (records made before ranks were kept, whose run folders were on another machine), with the
    record's own settings.

    If the retrained run's test metrics equal the record's (within two examples' worth), the ranks
    are added to the record, so the paired tests can use it; otherwise the record is left as it was
    apart from a ``reproduction`` entry saying by how much the metrics differ. Trains nothing new.
    """
    from intentrec.training.run import BEST

    spec = experiment.spec
    selected = _selected(experiment, options)
    needed = _checkpoints_needed(experiment, selected)

    def wanted(state: RunState) -> bool:
        if (state.run.run_dir(spec.runs_dir) / BEST).is_file():
            return False
        return _lacks_ranks(state) or state.run.run_id in needed

    # the selection, then the inputs it reads from outside it
    considered = [*selected, *(r for r in experiment.runs if r.run_id in needed and r not in selected)]
    candidates = [s for s in experiment.states(considered) if wanted(s)]
    limit = len(candidates) if options.max_runs is None else min(options.max_runs, len(candidates))
    for_others = sum(s.run.run_id in needed for s in candidates)
    echo(
        f"experiment {spec.name}: {len(candidates)} finished run(s) to retrain "
        f"({len(candidates) - for_others} without test ranks, {for_others} whose checkpoint other runs read), "
        f"{limit} now"
    )
    command = options.command(experiment.spec_file)
    datasets = _Datasets(spec, echo)
    trained: list[str] = []
    busy: list[str] = []
    for i, state in enumerate(candidates, start=1):
        if len(trained) >= limit:
            break
        run, step = state.run, f"[{i}/{len(candidates)}] {state.run.run_id}"
        try:
            with exclusive_lock(run.run_dir(spec.runs_dir) / RUNNER_LOCK, what=f"run {run.run_id}"):
                fresh = experiment.state(run)
                if not wanted(fresh):
                    echo(f"{step}: reproduced meanwhile by another process")
                    continue
                record = fresh.record
                echo(f"{step}: retraining to reproduce its record")
                dataset_dir, _, identity = datasets.get(run.dataset)
                experiment.set_identity(run.dataset, identity)
                result = _train(run, spec, dataset_dir, options, command, echo)
                # the same check as for a fresh record: ranks recomputed from the checkpoint must give
                # the record's test metrics within two examples' worth
                ks = list(record["config"]["trainer"]["ks"])
                ranks, problem = test_ranks_entry(run.run_dir(spec.runs_dir), record["test"], ks)
                diffs = {m: float(result.test[m] - v) for m, v in record["test"].items() if m in result.test}
                worst = max((abs(d) for d in diffs.values()), default=0.0)
                agrees = problem is None
                record["reproduction"] = {
                    "agrees": agrees,
                    "max_abs_difference": worst,
                    "differences": {m: d for m, d in diffs.items() if d != 0.0},
                    "command": command,
                    "machine": machine(options.threads),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                if RANKS_KEY in record:  # a run retrained for its checkpoint: its ranks were kept before
                    record["reproduction"]["same_ranks"] = ranks == record[RANKS_KEY]
                elif agrees:
                    record[RANKS_KEY] = ranks
                save_record(run.record_path(spec.records_dir), record)
        except InUseError as exc:
            echo(f"{step}: skipped, being trained by {exc.holder}")
            busy.append(run.run_id)
            continue
        trained.append(run.run_id)
        kept = "its checkpoint is here again" if run.run_id in needed else "test ranks added"
        if agrees:
            echo(f"{step}: reproduced (largest test metric difference {worst:.2e}); {kept}")
        else:
            echo(f"{step}: warning: did NOT reproduce, largest test metric difference {worst:.4f}; no ranks added")
    written = write_report(experiment.report())
    remaining = sum(wanted(s) for s in experiment.states(considered))
    return Outcome(trained, remaining, written, busy)


def _checkpoints_needed(experiment: Experiment, selected: list[RunSpec]) -> set[str]:
    """The finished runs whose checkpoints the selected unfinished runs read (ID runs, the two runs of a
    ``+`` row) and whose run folders are not here."""
    from intentrec.training.run import BEST

    spec = experiment.spec
    reads = {
        i for s in experiment.states(selected) if s.status == "todo" for i in (*s.run.needs, *(s.run.rerank or ()))
    }
    return {
        s.run.run_id
        for s in experiment.states([r for r in experiment.runs if r.run_id in reads])
        if s.status == "done" and not s.run.paper_mode and not (s.run.run_dir(spec.runs_dir) / BEST).is_file()
    }


def _lacks_ranks(state: RunState) -> bool:
    """A finished, validation-selected, trained run whose record has no test ranks and no reproduction."""
    record = state.record
    return bool(
        state.status == "done"
        and record
        and not record.get("paper_mode")
        and not state.run.rerank
        and RANKS_KEY not in record
        and "reproduction" not in record
    )


def _rerank(experiment: Experiment, run: RunSpec, command: str, echo: Echo, step: str) -> dict[str, Any] | None:
    """The record of an evaluation-only row, once both runs it needs have records; else None."""
    spec = experiment.spec
    needed = {r.run_id: r for r in experiment.runs if r.run_id in run.rerank}
    missing = [i for i in run.rerank if experiment.state(needed[i]).status != "done"]
    if missing:
        echo(f"{step}: waits for {', '.join(missing)} (not finished yet)")
        return None
    unusable = _unusable_inputs(experiment, run.rerank)
    if unusable:
        echo(f"{step}: cannot re-rank: {unusable}")
        return None
    echo(f"{step}: re-ranking the test lists of {run.rerank[0]} by {run.rerank[1]}")
    first, second = (experiment.state(needed[i]).record for i in run.rerank)
    started = time.perf_counter()
    return build_rerank_record(
        run,
        first,
        second,
        (needed[i].run_dir(spec.runs_dir) for i in run.rerank),
        command=command,
        wall_seconds_started=started,
    )


def _unusable_inputs(experiment: Experiment, run_ids: tuple[str, ...]) -> str | None:
    """Why the finished runs another run reads (its ID run, or the two runs of a ``+`` row) cannot be
    read here, or None. A record can outlive its run folder (made on another machine); a checkpoint
    retrained by ``--reproduce`` that did not give its record's metrics again is not that record's."""
    from intentrec.training.run import BEST

    spec = experiment.spec
    gone, differ = [], []
    for run in (r for r in experiment.runs if r.run_id in run_ids):
        record = experiment.state(run).record or {}
        if not (run.run_dir(spec.runs_dir) / BEST).is_file():
            gone.append(run.run_id)
        elif (record.get("reproduction") or {}).get("agrees") is False:
            differ.append(run.run_id)
    if gone:
        only = " ".join(f"--only {shlex.quote(r)}" for r in gone)
        has = "has a record but no checkpoint" if len(gone) == 1 else "have records but no checkpoints"
        return (
            f"{', '.join(gone)} {has} here (trained on another machine, or the run folder was removed); "
            f"retrain from the record with: intentrec experiment {shlex.quote(experiment.spec_file)} --reproduce {only}"
        )
    if differ:
        return f"the checkpoint of {', '.join(differ)} was retrained and did not reproduce its record"
    return None


def _attach_test_ranks(record: dict[str, Any], run_dir: Path, echo: Echo) -> None:
    """Per-example test ranks for the paired significance tests (not for paper-mode runs, whose test
    numbers are a maximum over epochs rather than one checkpoint's)."""
    if record.get("paper_mode"):
        return
    ks = list(record["config"]["trainer"]["ks"])
    record[RANKS_KEY], problem = test_ranks_entry(run_dir, record["test"], ks)
    if problem:
        record["test_ranks_warning"] = problem
        echo(f"    warning: {problem}")


def _backfill_test_ranks(experiment: Experiment, done: list[RunState], echo: Echo) -> None:
    """Adds test ranks to finished records made before records kept them, where the run folder is here."""
    from intentrec.training.run import BEST

    spec = experiment.spec
    for state in done:
        record, run = state.record, state.run
        run_dir = run.run_dir(spec.runs_dir)
        # a record whose reproduction disagreed keeps no ranks: its run folder holds the retrained model
        if not _lacks_ranks(state) or not (run_dir / BEST).is_file():
            continue
        try:
            with exclusive_lock(run_dir / RUNNER_LOCK, what=f"run {run.run_id}"):
                _attach_test_ranks(record, run_dir, echo)
                save_record(run.record_path(spec.records_dir), record)
        except InUseError:
            continue
        echo(f"{run.run_id}: test ranks added to its record (for the significance tests)")


def _cold_fraction(record: dict[str, Any]) -> float | None:
    return ((record.get("config") or {}).get("trainer") or {}).get("cold_start")


def _attach_cold_start(record: dict[str, Any], run_dir: Path, spec: ExperimentSpec, echo: Echo) -> None:
    """The cold-start evaluation of a run trained with ``train.cold_start`` (its cold items placed from
    text, beside the model's own rows, popularity and text similarity); nothing for other runs."""
    fraction = _cold_fraction(record)
    if fraction is None:
        return
    echo(f"    cold-start evaluation: {fraction} of the items, ranked from their text")
    try:
        record[COLD_START_KEY] = cold_start_entry(run_dir, fraction, spec.cold_start_eval)
    except IntentrecError as exc:  # e.g. a model that cannot score rows placed from text
        record["cold_start_warning"] = str(exc)
        echo(f"    warning: no cold-start evaluation: {exc}")


def _backfill_cold_start(experiment: Experiment, done: list[RunState], echo: Echo) -> None:
    """Adds the cold-start evaluation to finished records of ``train.cold_start`` runs that lack it,
    where the run folder is here."""
    from intentrec.training.run import BEST

    spec = experiment.spec
    for state in done:
        record, run = state.record, state.run
        run_dir = run.run_dir(spec.runs_dir)
        if run.rerank or _cold_fraction(record) is None or not (run_dir / BEST).is_file():
            continue
        if COLD_START_KEY in record or "cold_start_warning" in record:
            continue
        try:
            with exclusive_lock(run_dir / RUNNER_LOCK, what=f"run {run.run_id}"):
                _attach_cold_start(record, run_dir, spec, echo)
                save_record(run.record_path(spec.records_dir), record)
        except InUseError:
            continue
        echo(f"{run.run_id}: cold-start evaluation added to its record")


def report_only(experiment: Experiment) -> tuple[Report, list[Path]]:
    report = experiment.report()
    return report, write_report(report)


def _train(run: RunSpec, spec: ExperimentSpec, dataset_dir: Path, options: RunOptions, command: str, echo: Echo) -> Any:
    from intentrec import training
    from intentrec.training.trainer import epoch_line

    train_values = dict(run.settings["train"])
    if options.threads is not None:
        train_values["num_threads"] = options.threads
    if options.device is not None:
        train_values["device"] = options.device
    extra: dict[str, Any] = {}
    if run.method is not None:
        extra.update(method=run.method, method_config=run.settings.get("method", {}))
        # a candidate file the method declares is built here, before the run (never by the model)
        from intentrec.training.candidates import build_declared_candidates

        built = build_declared_candidates(
            dataset_dir,
            run.backbone,
            run.settings["model"],
            run.method,
            extra["method_config"],
            threads=options.threads,
            progress=options.progress,
        )
        if built is not None and not built.reused:
            echo(f"    candidates: wrote {built.path}")
    return training.train(
        dataset_dir,
        run.backbone,
        run.settings["model"],
        train_values,
        out=run.run_dir(spec.runs_dir),
        resume=True,
        progress=options.progress,
        on_epoch=lambda record: echo("    " + epoch_line(record, ("HR@20", "MRR@20"), run.paper_mode)),
        command=command,
        **extra,
    )


def _summary(record: dict[str, Any]) -> str:
    test = record["test"]
    shown = "  ".join(f"{k} {100 * test[k]:.2f}" for k in ("HR@20", "MRR@20") if k in test)
    paper = " (PAPER MODE: test max over epochs)" if record.get("paper_mode") else ""
    spe = record.get("train_seconds_per_epoch")
    speed = f", {spe:.1f} s/epoch" if spe is not None else ""
    return (
        f"test {shown}{paper} — {record['epochs_run']} epochs, best {record['best_epoch']}{speed}, "
        f"{record['wall_seconds']:.0f}s"
    )


def _eta(durations: list[float], left: int, *, fresh: bool) -> str:
    if not durations:
        return ""
    seconds = sum(durations) / len(durations) * left
    basis = "this session's runs" if fresh else "earlier runs"
    return f" (ETA {format_duration(seconds)} for {left} run(s), from the mean of {basis})"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class _Datasets:
    """Prepares (or reuses) each dataset once, on first use."""

    def __init__(self, spec: ExperimentSpec, echo: Echo):
        self.spec, self.echo = spec, echo
        self._ready: dict[str, tuple[Path, dict[str, Any], DatasetIdentity]] = {}

    def get(self, name: str) -> tuple[Path, dict[str, Any], DatasetIdentity]:
        if name not in self._ready:
            self._ready[name] = self._open(name)
        return self._ready[name]

    def _open(self, name: str) -> tuple[Path, dict[str, Any], DatasetIdentity]:
        from intentrec.data.dataset import PreparedDataset

        ds, folder = self.spec.datasets[name], self.spec.dataset_dir(name)
        if ds.prepare is not None:
            from intentrec.data.prepare import prepare_dataset

            p = ds.prepare
            self.echo(f"dataset {name}: preparing {p.source} {p.path} → {folder} (reused if up to date)")
            dataset = prepare_dataset(p.source, p.path, folder, protocol=p.protocol, **p.options)
        else:
            if not folder.is_dir():
                raise DataError(f"dataset '{name}': no such prepared folder (or add 'prepare:')", path=folder)
            dataset = PreparedDataset(folder)
        return folder, dict(dataset.manifest), DatasetIdentity.of(folder)
