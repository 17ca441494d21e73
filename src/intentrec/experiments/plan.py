"""Expanding an experiment file into runs, and checking which are done.

A run is one training: (dataset, backbone, method or none, variant, seed). Its id is readable and
stable, and names its run folder and record: ``beauty/srgnn+llm4sbr/wo-au/s0``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from intentrec.errors import ConfigError, DataError
from intentrec.experiments.spec import (
    NO_METHOD,
    ExperimentSpec,
    Settings,
    merge_settings,
    normalize_settings,
)

#: Trainer fields that do not change what a run computes; ignored when comparing settings.
NEUTRAL_TRAIN_FIELDS = frozenset({"num_threads", "device", "eval_batch_size"})

Status = Literal["done", "todo", "stale"]
#: the settings section of an evaluation-only row: {"of": run id re-ranked, "with": run id re-ranking}
RERANK_SECTION = "rerank"
#: appended to the variant of the re-ranked run
RERANK_SUFFIX = "+"
#: the method setting naming a trained run the method reads (LLMGR's ID side); may hold placeholders
ID_RUN = "id_run"
ID_RUN_PLACEHOLDERS = ("{seed}", "{dataset}", "{backbone}")


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    dataset: str
    backbone: str
    method: str | None
    variant: str
    seed: int
    settings: Settings  # {"model": {...}, "train": {... "seed": seed}, ["method": {...}], ["rerank": {...}]}
    order: int  # position in the expanded grid (report order)
    needs: tuple[str, ...] = ()  # runs of the grid this one reads (its method.id_run), trained first

    @property
    def rerank(self) -> tuple[str, str] | None:
        """(run re-ranked, run re-ranking) for an evaluation-only ``+`` row, else None."""
        section = self.settings.get(RERANK_SECTION)
        return (section["of"], section["with"]) if section else None

    @property
    def group(self) -> tuple[str, str, str | None, str]:
        """Runs that differ only by seed form one table row."""
        return (self.dataset, self.backbone, self.method, self.variant)

    @property
    def paper_mode(self) -> bool:
        return self.settings.get("train", {}).get("select_on") == "test"

    def record_path(self, records_dir: str | Path) -> Path:
        return Path(records_dir) / f"{self.run_id}.json"

    def run_dir(self, runs_dir: str | Path) -> Path:
        return Path(runs_dir) / self.run_id


def make_run_id(dataset: str, backbone: str, method: str | None, variant: str, seed: int) -> str:
    model = backbone if method is None else f"{backbone}+{method}"
    return f"{dataset}/{model}/{variant}/s{seed}"


def expand(spec: ExperimentSpec) -> list[RunSpec]:
    """Every run of the grid, in report order (blocks, datasets, backbones, methods, variants, seeds).

    A run id produced twice with the same settings is kept once; with different settings it is an
    error naming both places.
    """
    top = normalize_settings(spec.settings, "settings")
    runs: dict[str, RunSpec] = {}
    origin: dict[str, str] = {}
    for i, grid in enumerate(spec.grids):
        block = normalize_settings(grid.settings, f"grids[{i}].settings")
        variants = {
            name: normalize_settings(values, f"grids[{i}].variants.{name}") for name, values in grid.variants.items()
        }
        for dataset in grid.datasets or list(spec.datasets):
            for backbone in grid.backbones:
                for method_name in grid.methods:
                    method = None if method_name == NO_METHOD else method_name
                    for variant, values in variants.items():
                        if method is None and "method" in values:
                            raise ConfigError(
                                f"grids[{i}].variants.{variant} sets method.* keys, but the block "
                                "also runs 'none' (the backbone alone), where they would be ignored "
                                "and duplicate another run; put this variant in a block without 'none'"
                            )
                        settings = merge_settings(top, block, values)
                        if "seed" in settings.get("train", {}):
                            raise ConfigError(f"grids[{i}]: set seeds with 'seeds: [...]', not train.seed")
                        if grid.id_run_from is not None:
                            _check_id_run_from(i, variant, method, settings)
                        for seed in grid.seeds or spec.seeds:
                            run = _run(dataset, backbone, method, variant, seed, settings, len(runs))
                            run = _with_id_run(run, grid.id_run_from, spec.runs_dir)
                            where = f"grids[{i}] (variant '{variant}')"
                            _add(runs, origin, run, where)
                            if grid.rerank_with is not None and not run.paper_mode:
                                _add(runs, origin, _rerank_run(run, grid.rerank_with, len(runs)), where)
    for run in runs.values():
        if run.rerank and run.rerank[1] not in runs:
            raise ConfigError(
                f"{origin[run.run_id]}: rerank_with names run {run.rerank[1]}, which the grid does not define"
            )
        for need in run.needs:
            if need not in runs:
                raise ConfigError(f"{origin[run.run_id]}: id_run_from names run {need}, which the grid does not define")
    return [_with_grid_id_run(run, runs, spec.runs_dir) for run in runs.values()]


def _check_id_run_from(i: int, variant: str, method: str | None, settings: Settings) -> None:
    if method is None:
        raise ConfigError(
            f"grids[{i}]: id_run_from sets method.{ID_RUN}, which a backbone-alone run ('none') does not "
            "have; put the 'none' rows in another block"
        )
    if ID_RUN in settings.get("method", {}):
        raise ConfigError(f"grids[{i}] (variant '{variant}'): give method.{ID_RUN} or id_run_from, not both")


def _with_id_run(run: RunSpec, by: Any, runs_dir: str) -> RunSpec:
    """``method.id_run`` of a run: ``id_run_from``'s row of the same dataset and seed, or its placeholders filled."""
    method = dict(run.settings.get("method") or {})
    if by is not None:
        other_method = None if by.method == NO_METHOD else by.method
        other = make_run_id(run.dataset, by.backbone or run.backbone, other_method, by.variant, run.seed)
        if other == run.run_id:
            raise ConfigError(f"run {run.run_id} cannot be its own ID run (id_run_from names the same row)")
        method[ID_RUN] = (Path(runs_dir) / other).as_posix()
        return dataclasses.replace(run, settings={**run.settings, "method": method}, needs=(other,))
    value = method.get(ID_RUN)
    if not isinstance(value, str) or not any(p in value for p in ID_RUN_PLACEHOLDERS):
        return run
    for placeholder, filled in zip(ID_RUN_PLACEHOLDERS, (str(run.seed), run.dataset, run.backbone), strict=True):
        value = value.replace(placeholder, filled)
    method[ID_RUN] = value
    return dataclasses.replace(run, settings={**run.settings, "method": method})


def _with_grid_id_run(run: RunSpec, runs: dict[str, RunSpec], runs_dir: str) -> RunSpec:
    """A run whose ``method.id_run`` is another run's folder of this grid needs that run first."""
    value = (run.settings.get("method") or {}).get(ID_RUN)
    if run.needs or not isinstance(value, str):
        return run
    try:
        other = Path(value).relative_to(Path(runs_dir)).as_posix()
    except ValueError:
        return run
    return dataclasses.replace(run, needs=(other,)) if other in runs and other != run.run_id else run


def _rerank_run(run: RunSpec, by: Any, order: int) -> RunSpec:
    method = None if by.method == NO_METHOD else by.method
    other = make_run_id(run.dataset, by.backbone, method, by.variant, run.seed)
    if other == run.run_id:
        raise ConfigError(f"run {run.run_id} cannot re-rank its own lists (rerank_with names the same row)")
    variant = run.variant + RERANK_SUFFIX
    settings = {**run.settings, RERANK_SECTION: {"of": run.run_id, "with": other}}
    run_id = make_run_id(run.dataset, run.backbone, run.method, variant, run.seed)
    return RunSpec(run_id, run.dataset, run.backbone, run.method, variant, run.seed, settings, order)


def _run(
    dataset: str, backbone: str, method: str | None, variant: str, seed: int, settings: Settings, order: int
) -> RunSpec:
    resolved: Settings = {
        "model": dict(settings.get("model", {})),
        "train": {**settings.get("train", {}), "seed": seed},
    }
    if method is not None:
        resolved["method"] = dict(settings.get("method", {}))
    resolved = json.loads(json.dumps(resolved))  # plain JSON values, as a record stores them
    run_id = make_run_id(dataset, backbone, method, variant, seed)
    return RunSpec(run_id, dataset, backbone, method, variant, seed, resolved, order)


def _add(runs: dict[str, RunSpec], origin: dict[str, str], run: RunSpec, where: str) -> None:
    old = runs.get(run.run_id)
    if old is None:
        runs[run.run_id] = run
        origin[run.run_id] = where
    elif settings_differences(old.settings, run.settings):
        raise ConfigError(
            f"run {run.run_id} is defined twice with different settings, in {origin[run.run_id]} "
            f"and in {where}; give one of the variants another name"
        )


def select(runs: list[RunSpec], only: list[str] | None) -> list[RunSpec]:
    """Runs whose id matches any of the ``only`` globs (fnmatch: ``*`` also matches '/')."""
    if not only:
        return list(runs)
    return [r for r in runs if any(fnmatch.fnmatchcase(r.run_id, pattern) for pattern in only)]


def execution_order(runs: list[RunSpec]) -> list[RunSpec]:
    """Seed by seed: every row gets its first seed before any row gets its second."""
    seeds = sorted({r.seed for r in runs})
    rank = {seed: i for i, seed in enumerate(seeds)}
    per_group: dict[tuple, int] = {}
    keyed = []
    for run in runs:
        position = per_group.get(run.group, 0)
        per_group[run.group] = position + 1
        # evaluation-only rows come after the trainings they need
        keyed.append(((run.rerank is not None, position, rank[run.seed], run.order), run))
    ordered = [run for _, run in sorted(keyed, key=lambda item: item[0])]
    # a run comes after the runs it reads (its ID run), wherever their rows are in the file
    by_id = {run.run_id: run for run in ordered}
    out: list[RunSpec] = []
    placed: set[str] = set()

    def place(run: RunSpec) -> None:
        if run.run_id in placed:
            return
        placed.add(run.run_id)
        for need in run.needs:
            if need in by_id:
                place(by_id[need])
        out.append(run)

    for run in ordered:
        place(run)
    return out


# --------------------------------------------------------------------------- status


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``section.field: old → new`` for every difference that changes what a run computes."""
    problems = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if section == "train" and key in NEUTRAL_TRAIN_FIELDS:
                continue
            if a.get(key) != b.get(key):
                problems.append(f"{section}.{key}: {a.get(key)!r} → {b.get(key)!r}")
    return problems


def read_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc}); delete it to rerun the run", path=path) from None


def run_status(run: RunSpec, record: dict[str, Any] | None) -> tuple[Status, list[str]]:
    """``done`` (a record with the same settings), ``stale`` (a record with others) or ``todo``."""
    if record is None:
        return "todo", []
    problems = settings_differences(record.get("settings") or {}, run.settings)
    return ("stale", problems) if problems else ("done", [])


# --------------------------------------------------------------------------- validation


def check_settings(runs: list[RunSpec]) -> dict[str, str]:
    """Validate every run's model/train/method settings before anything is trained.

    Raises ConfigError naming the run and the key. Returns ``{method: reason}`` for methods that are
    not available in this installation (their settings cannot be checked).
    """
    from intentrec.training.run import build_configs

    seen: set[str] = set()
    unavailable: dict[str, str] = {}
    for run in runs:
        key = json.dumps([run.backbone, run.method, run.settings], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            build_configs(run.backbone, run.settings["model"], run.settings["train"], run.method)
        except ConfigError as exc:
            raise ConfigError(f"run {run.run_id}: {exc}") from None
        if run.method is None or run.method in unavailable:
            continue
        reason = _check_method(run.method, run.settings.get("method", {}), run.run_id)
        if reason:
            unavailable[run.method] = reason
    return unavailable


def _check_method(name: str, values: dict[str, Any], run_id: str) -> str | None:
    from intentrec.models.methods.registry import build_method_config, method_class

    try:
        method_class(name)
    except ConfigError as exc:
        return str(exc)
    try:
        build_method_config(name, values)
    except ConfigError as exc:
        raise ConfigError(f"run {run_id}: {exc}") from None
    return None
