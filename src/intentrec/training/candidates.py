"""Building candidate files (:mod:`intentrec.data.candidates`): each example's top-``top`` items from
a trained backbone, for LLM-DMsRec.

LLM-DMsRec shows the LLM a session together with the 50 items a pre-trained GNN (GCE-GNN) ranks
highest. The authors scored the *training* sessions with a model trained on those very sessions, so a
training example's candidate list was produced by a model that had fit its target — candidates that
are far better than anything available at test time. Here training examples are **cross-fitted**:

* the train *sessions* are split into ``folds`` groups (a seeded permutation of the train sessions,
  fold = position mod ``folds``; all prefixes of one session share its fold, so no session straddles
  two folds);
* for each fold ``f`` a model is trained on a derived dataset whose train split holds the sessions of
  every other fold (valid/test unchanged, so early stopping still uses the valid split; graph
  backbones such as GCE-GNN build their global graph from that train split, so the held-out sessions
  are not in it either), and it scores the train examples of fold ``f``;
* valid and test examples are scored by one more model trained on *all* train examples (the model a
  deployed system would use).

``leaky=True`` reproduces the authors' way (every example scored by the model trained on all train
examples) and is marked in the file name and the provenance.

Files (``DATASET/semantic/``, written atomically)::

    candidates.<model>.f<folds>[.leaky].parquet
        example_id int64, candidates list<int32> (item indices, best first), fold int32 (the fold
        whose model scored it; -1 = the model trained on all train examples), scored_by string (run id)
    candidates.<model>.f<folds>[.leaky].parquet.json
        provenance: settings, which run scored which examples, the sessions each run trained on
        (count + sha256 of the sorted session indices), per-fold counts, seconds

The runs live in a work folder (default ``runs/candidates/<dataset>-<fingerprint>/`` under the
current directory; never inside the dataset)::

    <model>.<settings key>/all                                    run on all train examples
    <model>.<settings key>/folds<k>.seed<s>/fold-<f>.data          derived dataset without fold f
    <model>.<settings key>/folds<k>.seed<s>/fold-<f>               run on it

The settings key covers the dataset, the backbone config and the trainer settings except the epoch
budget, so the ``all`` run is shared by the leaky and cross-fitted files and by every fold count.
Runs are resumable and reused: calling again after an interruption trains only what is missing, and
a finished file whose provenance matches the settings is returned as is.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from intentrec.data import schema
from intentrec.data.candidates import FORMAT, CandidateSpec, candidates_path, provenance_path, read_provenance
from intentrec.data.dataset import ExampleSet, PreparedDataset
from intentrec.data.folds import assign_folds, column, ids_sha256, write_fold_dataset
from intentrec.errors import ConfigError, DataError
from intentrec.evaluation.evaluate import top_items
from intentrec.io import atomic_path, exclusive_lock, write_json
from intentrec.models.base import BackboneConfig
from intentrec.semantic.store import dataset_fingerprint
from intentrec.training.config import TrainerConfig
from intentrec.training.run import build_configs, load_run
from intentrec.training.trainer import train as train_run

ALL_RUN = "all"
#: fold number recorded for examples scored by the model trained on all train examples
ALL_FOLD = -1


@dataclass
class CandidateResult:
    path: Path
    provenance_path: Path
    provenance: dict[str, Any]
    reused: bool


def _settings_key(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _file_settings(
    fingerprint: str,
    model: str,
    model_cfg: BackboneConfig,
    trainer_cfg: TrainerConfig,
    folds: int,
    top: int,
    seed: int,
    leaky: bool,
) -> dict[str, Any]:
    """What a candidate file's content depends on (recorded in its provenance, compared on reuse)."""
    return {
        "format": FORMAT,
        "dataset_fingerprint": fingerprint,
        "model": model,
        "model_config": model_cfg.model_dump(mode="json"),
        # what changes the candidates: not the device, threads or evaluation batch size
        "trainer": {**trainer_cfg.resume_key(), "epochs": trainer_cfg.epochs},
        "folds": folds,
        "top": top,
        "seed": seed,
        "leaky": leaky,
    }


def require_candidates(dataset_dir: str | Path, spec: CandidateSpec) -> None:
    """Check that the candidate file ``spec`` declares exists and was built with its settings.

    A missing or outdated file is an error naming the command that builds it; nothing is trained here.
    A file the user gave (``spec.given``) is taken as it is.
    """
    if spec.given:
        return
    path = spec.path(dataset_dir)
    if not path.is_file():
        raise spec.missing(dataset_dir)
    _, model_cfg, trainer_cfg = build_configs(spec.model, spec.model_config, spec.trainer_config)
    expected = _file_settings(
        dataset_fingerprint(dataset_dir),
        spec.model,
        model_cfg,
        trainer_cfg,
        spec.folds,
        spec.top,
        spec.seed,
        spec.leaky,
    )
    stored = read_provenance(path).get("settings")
    if stored != expected:
        differ = sorted(k for k in set(expected) | set(stored or {}) if (stored or {}).get(k) != expected.get(k))
        raise DataError(
            f"the candidate file was built with other settings ({', '.join(differ)} differ) than this run "
            f"declares; rebuild it with\n  {spec.build_command(dataset_dir)}",
            path=path,
        )


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[candidates] {message}", file=sys.stderr, flush=True)


def default_work_dir(dataset: PreparedDataset, fingerprint: str) -> Path:
    return Path("runs") / "candidates" / f"{dataset.path.resolve().name}-{fingerprint[:12]}"


def cross_fit_candidates(
    dataset_dir: str | Path,
    *,
    model: str = "gcegnn",
    folds: int = 2,
    top: int = 50,
    seed: int = 0,
    model_config: dict[str, Any] | None = None,
    trainer_config: dict[str, Any] | None = None,
    work_dir: str | Path | None = None,
    leaky: bool = False,
    progress: bool | None = None,
    force: bool = False,
    out: str | Path | None = None,
    on_run: Callable[[str, dict[str, Any]], None] | None = None,
) -> CandidateResult:
    """Write (or reuse) the candidate file of a prepared dataset; see the module docstring.

    ``model_config``/``trainer_config`` are the backbone and trainer settings of every candidate run
    (the backbone's paper defaults sit under them). ``force`` recomputes the file (finished runs in
    the work folder are still reused). ``on_run(run_id, info)`` is called after each run is scored.
    A second process asking for the same file waits for the first and then reuses its file.
    """
    started = time.perf_counter()
    progress = sys.stderr.isatty() if progress is None else progress
    dataset_dir = Path(dataset_dir)
    dataset = PreparedDataset(dataset_dir)
    if top < 1:
        raise ConfigError(f"candidates: top must be >= 1, got {top}")
    if not leaky and folds < 2:
        raise ConfigError(f"candidates: cross-fitting needs folds >= 2, got {folds} (or use leaky=True)")
    if leaky and folds < 1:
        raise ConfigError(f"candidates: folds must be >= 1, got {folds}")
    _, model_cfg, trainer_cfg = build_configs(model, model_config, trainer_config)
    fingerprint = dataset_fingerprint(dataset_dir)
    settings = _file_settings(fingerprint, model, model_cfg, trainer_cfg, folds, top, seed, leaky)
    path = Path(out) if out is not None else candidates_path(dataset_dir, model, folds, leaky)
    prov_path = provenance_path(path)
    lock = path.with_name(path.name + ".lock")

    def say_waiting(holder: str) -> None:
        print(f"candidates: waiting for {holder}, which is writing {path}", file=sys.stderr, flush=True)

    # A second process asking for the same file waits here, then finds it up to date.
    with exclusive_lock(lock, what=f"candidate file {path}", wait=True, on_wait=say_waiting):
        if not force and path.is_file() and prov_path.is_file():
            try:
                stored = json.loads(prov_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                stored = {}
            if stored.get("settings") == settings:
                _say(progress, f"up to date: {path}")
                return CandidateResult(path, prov_path, stored, reused=True)

        # Runs are keyed by what changes what they compute: dataset, backbone and its config, trainer
        # settings except the epoch budget (a finished run can extend it; the trainer resumes). The run
        # on all train examples is shared by every fold count, seed, list length and the leaky mode.
        run_key = _settings_key(
            {
                "format": FORMAT,
                "dataset_fingerprint": fingerprint,
                "model": model,
                "model_config": settings["model_config"],
                "trainer": trainer_cfg.resume_key(),
            }
        )
        root = Path(work_dir) if work_dir is not None else default_work_dir(dataset, fingerprint)
        work = root / f"{model}.{run_key}"
        fold_work = work / f"folds{folds}.seed{seed}"
        work.mkdir(parents=True, exist_ok=True)
        device = str(trainer_cfg.device)

        # ---- fold assignment by session
        sessions = pq.read_table(dataset_dir / schema.SESSIONS, columns=["session_index", "split"])
        session_index = column(sessions, "session_index", dataset_dir / schema.SESSIONS).astype(np.int64)
        session_split = column(sessions, "split", dataset_dir / schema.SESSIONS)
        train_sessions = np.sort(session_index[session_split == "train"])
        if not leaky and len(train_sessions) < folds:
            raise DataError(f"only {len(train_sessions)} train sessions for {folds} folds", path=dataset_dir)
        examples_table = pq.read_table(dataset_dir / schema.EXAMPLES, columns=["example_id", "split", "session_index"])
        ex_ids = column(examples_table, "example_id", dataset_dir / schema.EXAMPLES).astype(np.int64)
        ex_split = column(examples_table, "split", dataset_dir / schema.EXAMPLES)
        ex_session = column(examples_table, "session_index", dataset_dir / schema.EXAMPLES).astype(np.int64)

        fold_of_session = (
            assign_folds(train_sessions, folds, seed) if not leaky else np.zeros(len(train_sessions), np.int64)
        )
        train = dataset.examples("train")
        if not np.array_equal(
            train.example_ids, ex_ids[ex_split == "train"]
        ):  # pragma: no cover - same file, same order
            raise DataError("train examples are not in file order", path=dataset_dir / schema.EXAMPLES)
        train_session = ex_session[ex_split == "train"]
        pos = np.clip(np.searchsorted(train_sessions, train_session), 0, max(len(train_sessions) - 1, 0))
        if len(train_session) and (len(train_sessions) == 0 or np.any(train_sessions[pos] != train_session)):
            bad = train_session[train_sessions[pos] != train_session][:5] if len(train_sessions) else train_session[:5]
            raise DataError(
                f"field 'session_index': train examples of sessions {bad.tolist()} that are not train sessions "
                f"in {schema.SESSIONS}",
                path=dataset_dir / schema.EXAMPLES,
            )
        train_fold = fold_of_session[pos]

        ids_parts: list[np.ndarray] = []
        cand_parts: list[np.ndarray] = []
        fold_parts: list[np.ndarray] = []
        run_parts: list[np.ndarray] = []
        runs: dict[str, dict[str, Any]] = {}
        fold_info: dict[str, dict[str, Any]] = {}

        def fit_and_score(
            run_id: str, data_dir: Path, to_score: list[ExampleSet], fold: int, trained_on: np.ndarray
        ) -> None:
            run_started = time.perf_counter()
            _say(progress, f"{run_id}: training {model} on {data_dir}")
            run_dir = (fold_work if fold != ALL_FOLD else work) / run_id
            result = train_run(
                data_dir,
                model,
                model_cfg,
                trainer_cfg,
                out=run_dir,
                progress=progress,
                command=f"cross_fit_candidates({dataset_dir}, model={model}, folds={folds}, run={run_id})",
            )
            trained = load_run(run_dir, device=device)
            scored: dict[str, int] = {}
            for examples in to_score:
                cands = top_items(
                    trained.model,
                    examples,
                    top,
                    batch_size=trainer_cfg.eval_batch_size,
                    max_length=trainer_cfg.max_length,
                    device=trained.device,
                )
                ids_parts.append(examples.example_ids.astype(np.int64))
                cand_parts.append(cands)
                fold_parts.append(np.full(len(examples), fold, dtype=np.int32))
                run_parts.append(np.full(len(examples), run_id, dtype=object))
                scored[examples.split] = scored.get(examples.split, 0) + len(examples)
            info = {
                "run_dir": str(run_dir.resolve()),
                "dataset_dir": str(data_dir.resolve()),
                "fold": fold,
                "trained_on": {
                    "train_sessions": int(len(trained_on)),
                    "train_sessions_sha256": ids_sha256(trained_on),
                    "train_examples": int(len(trained.dataset.examples("train"))),
                },
                "scored": scored,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "valid": result.valid,
                "seconds": round(time.perf_counter() - run_started, 3),
            }
            runs[run_id] = info
            if on_run is not None:
                on_run(run_id, info)

        if not leaky:
            for f in range(folds):
                held = train_sessions[fold_of_session == f]
                kept = train_sessions[fold_of_session != f]
                derived_info = {
                    "dataset_fingerprint": fingerprint,
                    "dataset_path": str(dataset_dir.resolve()),
                    "purpose": "candidate cross-fitting: train split without the held-out fold's sessions",
                    "fold": f,
                    "folds": folds,
                    "seed": seed,
                    "held_out_train_sessions": int(len(held)),
                    "held_out_sha256": ids_sha256(held),
                }
                data_dir = write_fold_dataset(dataset, fold_work / f"fold-{f}.data", held, derived_info)
                rows = np.flatnonzero(train_fold == f)
                fit_and_score(f"fold-{f}", data_dir, [train.subset(rows)], f, kept)
                fold_info[str(f)] = {
                    "held_out_train_sessions": int(len(held)),
                    "held_out_sha256": ids_sha256(held),
                    "train_examples_scored": int(len(rows)),
                    "scored_by": f"fold-{f}",
                }
        to_score = [dataset.examples(s) for s in ("valid", "test")]
        if leaky:
            to_score = [train, *to_score]
        fit_and_score(ALL_RUN, dataset_dir, to_score, ALL_FOLD, train_sessions)

        ids = np.concatenate(ids_parts)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if len(np.unique(ids)) != len(ids):  # pragma: no cover - a bug, never user input
            raise RuntimeError("an example was scored twice")
        cands = np.concatenate(cand_parts)[order]
        width = cands.shape[1]
        offsets = np.arange(0, (len(ids) + 1) * width, width, dtype=np.int32)
        table = pa.table(
            {
                "example_id": pa.array(ids, pa.int64()),
                "candidates": pa.ListArray.from_arrays(
                    pa.array(offsets, pa.int32()), pa.array(cands.reshape(-1), pa.int32())
                ),
                "fold": pa.array(np.concatenate(fold_parts)[order], pa.int32()),
                "scored_by": pa.array(np.concatenate(run_parts)[order].tolist(), pa.string()),
            }
        )
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        provenance = {
            "file": path.name,
            "settings": settings,
            "dataset_path": str(dataset_dir.resolve()),
            "trainer_used": trainer_cfg.model_dump(mode="json"),
            "work_dir": str(work.resolve()),
            "leaky": leaky,
            "rule": (
                "leaky (the authors' way): every example scored by the model trained on all train examples"
                if leaky
                else "cross-fitted: train sessions split into folds (seeded permutation, position mod folds); "
                "a fold's train examples are scored by a model trained without that fold's sessions; "
                "valid/test by the model trained on all train examples"
            ),
            "candidates_per_example": int(width),
            "examples": {s: int((ex_split == s).sum()) for s in schema.SPLITS},
            "folds": fold_info,
            "runs": runs,
            "seconds": round(time.perf_counter() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(prov_path, provenance)
        _say(progress, f"wrote {path} ({len(ids)} examples × {width})")
        return CandidateResult(path, prov_path, provenance, reused=False)


def build_candidates(
    dataset_dir: str | Path,
    spec: CandidateSpec,
    *,
    threads: int | None = None,
    progress: bool | None = None,
) -> CandidateResult:
    """Build (or reuse) the candidate file ``spec`` names; ``threads`` sets the runs' CPU threads."""
    trainer = dict(spec.trainer_config)
    if threads is not None:
        trainer["num_threads"] = threads  # does not change what the runs compute
    return cross_fit_candidates(
        dataset_dir,
        model=spec.model,
        folds=spec.folds,
        top=spec.top,
        seed=spec.seed,
        model_config=spec.model_config,
        trainer_config=trainer,
        work_dir=spec.work_dir,
        leaky=spec.leaky,
        progress=progress,
    )


def build_declared_candidates(
    dataset_dir: str | Path,
    backbone: str,
    model_config: dict[str, Any] | None,
    method: str | None,
    method_config: dict[str, Any] | None,
    *,
    threads: int | None = None,
    progress: bool | None = None,
) -> CandidateResult | None:
    """The explicit step before training: build (or reuse) the candidate file the model declares.

    Returns None when the model reads no candidate file, or reads one the user gave.
    """
    from intentrec.models.build import build_session_model
    from intentrec.models.methods.registry import build_method_config

    _, model_cfg, _ = build_configs(backbone, model_config, None)
    method_cfg = build_method_config(method, method_config) if method else None
    model = build_session_model(backbone, model_cfg, PreparedDataset(dataset_dir).num_items, method, method_cfg)
    spec = model.needs().candidates
    if spec is None or spec.given:
        return None
    return build_candidates(dataset_dir, spec, threads=threads, progress=progress)
