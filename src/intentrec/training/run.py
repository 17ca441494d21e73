"""Run folders: what a training run writes, and how a finished run is loaded again.

A run folder holds::

    config.json        dataset path + manifest sha256, model name + config, trainer config,
                       library version, command line
    log.jsonl          one line per completed epoch (never duplicated on resume)
    best.safetensors   weights of the selected epoch
    last.safetensors   resume state: weights, optimizer, scheduler, RNGs, bookkeeping (one file)
    metrics.json       final metrics; written last, so its presence means the run finished
    cold_items.json    with train.cold_start only: the items hidden from training (data/cold_items.py)
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from intentrec import __version__
from intentrec.config import deep_merge
from intentrec.data import schema
from intentrec.data.dataset import PreparedDataset
from intentrec.data.identity import DatasetIdentity
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.io import write_json
from intentrec.models.base import Backbone, BackboneConfig, SessionModel
from intentrec.models.build import build_session_model
from intentrec.models.methods.base import MethodConfig
from intentrec.models.methods.registry import build_method_config, method_class
from intentrec.models.registry import backbone_class
from intentrec.training.checkpoint import load_weights
from intentrec.training.config import TrainerConfig

CONFIG = "config.json"
LOG = "log.jsonl"
BEST = "best.safetensors"
LAST = "last.safetensors"
METRICS = "metrics.json"
LOCK = ".lock"  # held by the process training into the folder (see io.exclusive_lock)
COLD_ITEMS = "cold_items.json"  # the items hidden from training (train.cold_start), see data/cold_items.py
RUN_FILES = (CONFIG, LOG, BEST, LAST, METRICS, COLD_ITEMS)


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def has_run(self) -> bool:
        return self.config.is_file()

    def clear(self) -> None:
        """Remove the files of a previous run (only ours; anything else in the folder stays)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        if not path.is_file():
            raise DataError(f"{name} is missing; is this a finished run folder?", path=self.path)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc}", path=path) from None

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line]


# --------------------------------------------------------------------------- settings


def split_settings(settings: dict[str, Any], backbone: type[Backbone]) -> tuple[dict, dict]:
    """Split merged ``--config``/``--set`` values into (model, trainer) dicts.

    ``model.<field>`` and ``train.<field>`` go where they say; an unprefixed key goes to the trainer
    if TrainerConfig has that field, else to the model if the backbone config has it, else it is an
    error naming the key.
    """
    model: dict[str, Any] = {}
    trainer: dict[str, Any] = {}
    for key, value in settings.items():
        if key in ("model", "train"):
            if not isinstance(value, dict):
                raise ConfigError(f"'{key}' must be a section of key: value pairs, got {value!r}")
            (model if key == "model" else trainer).update(value)
        elif key in TrainerConfig.model_fields:
            trainer[key] = value
        elif key in backbone.Config.model_fields:
            model[key] = value
        else:
            known_t = ", ".join(sorted(TrainerConfig.model_fields))
            known_m = ", ".join(sorted(backbone.Config.model_fields))
            raise ConfigError(
                f"unknown setting '{key}': not a trainer field ({known_t}) nor a field of backbone "
                f"'{backbone.registry_name}' ({known_m}); prefix it with 'train.' or 'model.'"
            )
    return model, trainer


def pop_method_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the ``method:`` section (``--set method.k=5``) off merged settings: (rest, method)."""
    rest = dict(settings)
    method = rest.pop("method", None) or {}
    if not isinstance(method, dict):
        raise ConfigError(f"'method' must be a section of key: value pairs, got {method!r}")
    return rest, method


def build_configs(
    model_name: str,
    model_config: dict[str, Any] | BackboneConfig | None,
    trainer_config: dict[str, Any] | TrainerConfig | None,
    method: str | None = None,
) -> tuple[type[Backbone], BackboneConfig, TrainerConfig]:
    """Validate both configs; the backbone's ``default_train`` sits under the given trainer values,
    and a ``method``'s own ``default_train`` (e.g. LLMGR's batch size) between the two."""
    cls = backbone_class(model_name)
    if isinstance(model_config, BackboneConfig):
        model_cfg = cls.Config.build(model_config.model_dump(), where=f"config of backbone '{model_name}'")
    else:
        model_cfg = cls.Config.build(model_config, where=f"config of backbone '{model_name}'")
    if isinstance(trainer_config, TrainerConfig):
        trainer_cfg = trainer_config
    else:
        defaults = dict(cls.default_train)
        if method is not None:
            defaults = deep_merge(defaults, method_class(method).default_train)
        merged = deep_merge(defaults, trainer_config or {})
        trainer_cfg = TrainerConfig.build(merged, where="trainer config")
    return cls, model_cfg, trainer_cfg


def same_dataset(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two records' ``dataset`` sections name one dataset (fingerprints where both have one)."""
    if old.get("fingerprint") and new.get("fingerprint"):
        return old["fingerprint"] == new["fingerprint"]
    return old.get("manifest_sha256") == new.get("manifest_sha256")


def run_record(
    dataset: PreparedDataset,
    model_name: str,
    model_cfg: BackboneConfig,
    trainer_cfg: TrainerConfig,
    command: str | None,
    method: str | None = None,
    method_cfg: MethodConfig | None = None,
) -> dict[str, Any]:
    identity = DatasetIdentity.of(dataset.path)
    record = {
        "dataset": {
            "path": str(dataset.path.resolve()),
            "manifest_sha256": identity.manifest_sha256,
            "fingerprint": identity.fingerprint,
        },
        "model": {"name": model_name, "config": model_cfg.model_dump(mode="json")},
        "trainer": trainer_cfg.model_dump(mode="json"),
        "library_version": __version__,
        "command": command if command is not None else shlex.join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if method is not None:
        assert method_cfg is not None
        record["method"] = {"name": method, "config": method_cfg.model_dump(mode="json")}
    return record


def resume_mismatches(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences that forbid resuming ``old`` with the settings of ``new``."""
    problems = []
    if not same_dataset(old["dataset"], new["dataset"]):
        problems.append(f"dataset differs ({old['dataset']['path']} → {new['dataset']['path']})")
    if old["model"]["name"] != new["model"]["name"]:
        problems.append(f"model: {old['model']['name']} → {new['model']['name']}")
    old_method, new_method = old.get("method") or {}, new.get("method") or {}
    if old_method.get("name") != new_method.get("name"):
        problems.append(f"method: {old_method.get('name')} → {new_method.get('name')}")
    if old["model"]["name"] != new["model"]["name"] or old_method.get("name") != new_method.get("name"):
        return problems  # their configs are not comparable
    old_train = TrainerConfig.build(old["trainer"]).resume_key()
    new_train = TrainerConfig.build(new["trainer"]).resume_key()
    # through the config classes, so an option added since the run started counts with its default
    model_config = backbone_class(new["model"]["name"]).Config
    old_model = model_config.build(old["model"]["config"]).model_dump(mode="json")
    new_model = model_config.build(new["model"]["config"]).model_dump(mode="json")
    old_method_values, new_method_values = old_method.get("config") or {}, new_method.get("config") or {}
    if new_method.get("name"):
        old_method_values = build_method_config(new_method["name"], old_method_values).model_dump(mode="json")
        new_method_values = build_method_config(new_method["name"], new_method_values).model_dump(mode="json")
    for section, old_values, new_values in (
        ("model", old_model, new_model),
        ("train", old_train, new_train),
        ("method", old_method_values, new_method_values),
    ):
        for key in sorted(set(old_values) | set(new_values)):
            if old_values.get(key) != new_values.get(key):
                problems.append(f"{section}.{key}: {old_values.get(key)!r} → {new_values.get(key)!r}")
    return problems


def write_record(run: RunDir, record: dict[str, Any]) -> None:
    write_json(run.config, record)


# --------------------------------------------------------------------------- loading a run


def require_inputs(model: SessionModel, dataset: PreparedDataset) -> None:
    """Files a model declares that an explicit step builds (a candidate file) exist and are current."""
    spec = model.needs().candidates
    if spec is not None:
        from intentrec.training.candidates import require_candidates

        require_candidates(dataset.path, spec)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available (use device=cpu)")
    return torch.device(name)


@dataclass
class TrainedRun:
    run: RunDir
    record: dict[str, Any]
    dataset: PreparedDataset
    model: SessionModel
    trainer: TrainerConfig
    device: torch.device
    method_config: MethodConfig | None = None

    @property
    def paper_mode(self) -> bool:
        return self.trainer.paper_mode


def load_run(
    run_dir: str | Path,
    *,
    dataset_dir: str | Path | None = None,
    device: str = "cpu",
) -> TrainedRun:
    """Rebuild the model (backbone, or method over it) from ``config.json``, ``prepare`` it on the
    dataset, load its weights.

    ``dataset_dir`` overrides the recorded dataset path (a moved dataset); its manifest must match.
    """
    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise DataError("run folder not found", path=run.path)
    record = run.read_json(CONFIG)
    try:
        recorded = Path(record["dataset"]["path"])
        model_name = record["model"]["name"]
        model_values = record["model"]["config"]
        trainer_values = record["trainer"]
    except (KeyError, TypeError) as exc:
        raise DataError(f"config.json lacks field {exc}", path=run.config) from None
    data_path = Path(dataset_dir) if dataset_dir is not None else recorded
    if not data_path.is_dir():
        raise DataError(
            "the run's dataset folder is missing (pass the dataset's new location with --data)",
            path=data_path,
        )
    dataset = PreparedDataset(data_path)
    if not DatasetIdentity.of(data_path).matches(record["dataset"]):
        raise DataError(
            "dataset differs from the one this run was trained on (fingerprint mismatch)",
            path=data_path / schema.MANIFEST,
        )
    cls, model_cfg, trainer_cfg = build_configs(model_name, model_values, trainer_values)
    if trainer_cfg.cold_start is not None:  # the model is prepared on what it was trained on
        from intentrec.data.cold_items import ColdStartView, choose_cold_items

        cold = choose_cold_items(dataset, trainer_cfg.cold_start, trainer_cfg.cold_start_seed)
        cold.check_recorded(run / COLD_ITEMS)
        dataset = ColdStartView(dataset, cold)
    method = (record.get("method") or {}).get("name")
    method_cfg = build_method_config(method, record["method"]["config"]) if method else None
    dev = resolve_device(device)
    model = build_session_model(model_name, model_cfg, dataset.num_items, method, method_cfg)
    require_inputs(model, dataset)
    model.prepare(dataset)
    if not run.best.is_file():
        raise DataError(f"{BEST} is missing; the run has not completed an epoch", path=run.path)
    load_weights(run.best, model)
    model.to(dev).eval()
    return TrainedRun(run, record, dataset, model, trainer_cfg, dev, method_cfg)


def evaluate_run(
    trained: TrainedRun,
    split: str,
    *,
    slices: bool = False,
    rerank_with: TrainedRun | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of a loaded run's best checkpoint on ``split`` (exact full ranking), as a JSON-ready dict.

    With ``rerank_with`` (another run on the same dataset), each top-K list is re-ordered by that
    run's model (:mod:`intentrec.evaluation.rerank`); ``metrics`` are then the re-ranked ones and
    ``metrics_before_rerank`` the run's own. With ``sample``, only the seeded sample of ``sample``
    examples that ``intentrec infer`` / ``intentrec llm-rank --sample N --seed S`` use is scored.
    """
    from intentrec.evaluation import rank_examples

    cfg = trained.trainer
    examples = trained.dataset.examples(split)
    if sample is not None:
        from intentrec.semantic.infer import select_rows

        examples = examples.subset(select_rows(len(examples), limit=None, sample=sample, seed=seed))
    examples = trained.model.select_examples(examples)
    ranked = rank_examples(
        trained.model, examples, batch_size=cfg.eval_batch_size, max_length=cfg.max_length, device=trained.device
    )
    if len(ranked.ranks) == 0:
        raise IntentrecError(f"the {split} split of {trained.dataset.path} has no examples")
    report: dict[str, Any] = {
        "run": str(trained.run.path),
        "split": split,
        "examples": int(len(ranked.ranks)),
        "checkpoint": (
            "checkpoint selected on TEST (paper mode)"
            if trained.paper_mode
            else f"checkpoint selected on VALID by {cfg.select_metric}"
        ),
        "metrics": ranked.metrics(cfg.ks),
    }
    if sample is not None:
        report["sample"] = {"sample": sample, "seed": seed, "example_ids": ranked.example_ids.tolist()}
    if slices:
        report["slices"] = ranked.sliced(trained.dataset.train_counts(), cfg.ks)
    if rerank_with is not None:
        from intentrec.evaluation.rerank import reranked_metrics, reranked_ranks

        kept = rerank_with.model.select_examples(examples)
        if len(kept) != len(examples):
            raise IntentrecError(f"the re-ranking run {rerank_with.run.path} cannot score every {split} example")
        ranks = reranked_ranks(
            trained.model, rerank_with.model, examples, cfg.ks,
            batch_size=cfg.eval_batch_size, max_length=cfg.max_length, device=trained.device,
        )  # fmt: skip
        report["metrics_before_rerank"] = report["metrics"]
        report["metrics"] = reranked_metrics(ranks)
        report["reranked_by"] = str(rerank_with.run.path)
    return report
