"""The training loop: Adam + optional StepLR, per-epoch validation, early stopping, exact resume.

Selection modes
---------------
``select_on="valid"`` (default, honest)
    The epoch with the best ``select_metric`` on VALID is kept and evaluated once on TEST.
``select_on="test"`` (PAPER MODE)
    As the papers' code does: TEST is evaluated every epoch, early stopping and the kept checkpoint
    use TEST, and the reported test numbers are the per-metric maximum over epochs. Every output of
    this mode says so. VALID is evaluated every epoch too, so the same run also reports what
    valid-based selection would have given (``metrics.json`` → ``valid_selected``).
"""

from __future__ import annotations

import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import ExampleSet, PreparedDataset
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.evaluation.evaluate import evaluate_model
from intentrec.io import append_jsonl, atomic_open, exclusive_lock, write_json
from intentrec.models.base import BackboneConfig, TrainingPhase, TrainingPlan
from intentrec.models.build import build_session_model
from intentrec.models.methods.base import MethodConfig
from intentrec.models.methods.registry import build_method_config
from intentrec.training.allocator import keep_freed_memory
from intentrec.training.checkpoint import (
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
)
from intentrec.training.config import TrainerConfig
from intentrec.training.distributed import Distributed, check_world, join, torchrun_env
from intentrec.training.run import (
    COLD_ITEMS,
    LOCK,
    RunDir,
    build_configs,
    require_inputs,
    resolve_device,
    resume_mismatches,
    run_record,
    write_record,
)

PAPER_MODE_SELECTION = "paper-mode: per-metric max over epochs on TEST"
PAPER_MODE_WARNING = (
    "PAPER MODE: the test numbers are the per-metric MAXIMUM over epochs on the TEST split "
    "(model selection on test, as in the original papers' code). They are optimistically biased; "
    "compare them only with other paper-mode numbers."
)
#: How often (in steps) the running loss is synced from the device for the progress bar.
_PROGRESS_SYNC_STEPS = 50


@dataclass
class TrainResult:
    run_dir: Path
    selection: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    valid: dict[str, float]
    test: dict[str, float]
    metrics: dict[str, Any] = field(repr=False)
    history: list[dict[str, Any]] = field(repr=False)

    @property
    def paper_mode(self) -> bool:
        return self.selection.startswith(PAPER_MODE_SELECTION)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (monotonic over the process's life)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def train(
    dataset_dir: str | Path,
    model: str,
    model_config: dict[str, Any] | BackboneConfig | None = None,
    trainer_config: dict[str, Any] | TrainerConfig | None = None,
    *,
    out: str | Path,
    resume: bool = True,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    command: str | None = None,
    method: str | None = None,
    method_config: dict[str, Any] | MethodConfig | None = None,
    evaluate_test: bool = True,
    ddp: bool | None = None,
) -> TrainResult:
    """Train backbone ``model`` on a prepared dataset into run folder ``out``.

    With ``resume=True`` (default) an interrupted run in ``out`` with the same settings continues
    from its last completed epoch, and a finished one is returned as is (only ``epochs`` may grow);
    ``resume=False`` deletes the previous run's files first. ``progress=None`` shows a progress bar
    only on a terminal. ``on_epoch`` receives each epoch's log record. ``method`` wraps the backbone
    in a registered method (e.g. ``"llm4sbr"``) configured by ``method_config``.
    ``evaluate_test=False`` (hyper-parameter tuning) never evaluates TEST: ``metrics.json`` then has
    no ``test``; valid mode without ``track_test`` only.
    ``ddp``: train as one rank of a DDP job (:mod:`intentrec.training.distributed`): ``None`` when the
    process was started by torchrun (its environment variables are set), ``True`` requires that.
    """
    dataset = PreparedDataset(dataset_dir)
    _, model_cfg, cfg = build_configs(model, model_config, trainer_config, method)
    run = RunDir(Path(out))
    method_cfg = build_method_config(method, method_config) if method else None
    record = run_record(dataset, model, model_cfg, cfg, command, method, method_cfg)
    dist = join(cfg.device) if ddp or (ddp is None and torchrun_env()) else None
    if dist is not None:
        check_world(cfg.batch_size, dist.world_size)
        record["distributed"] = dist.describe()

    def lock() -> AbstractContextManager[Any]:
        return exclusive_lock(run.path / LOCK, what=f"run folder {run.path}")

    with lock() if dist is None else dist.held_by_main(lock):  # DDP: rank 0 holds the lock
        return _train_locked(
            dataset,
            model,
            model_cfg,
            cfg,
            run,
            record,
            resume,
            progress,
            on_epoch,
            method,
            method_cfg,
            evaluate_test,
            dist,
        )


def _train_locked(
    dataset: PreparedDataset,
    backbone: str,
    model_cfg: BackboneConfig,
    cfg: TrainerConfig,
    run: RunDir,
    record: dict[str, Any],
    resume: bool,
    progress: bool | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    method: str | None,
    method_cfg: MethodConfig | None,
    evaluate_test: bool = True,
    dist: Distributed | None = None,
) -> TrainResult:
    if not evaluate_test and (cfg.paper_mode or cfg.track_test):
        raise ConfigError("a run that never evaluates TEST needs train.select_on=valid and train.track_test=false")
    if dist is None:
        finished = _open_run(run, record, cfg, resume, evaluate_test)
    else:  # rank 0 checks and prepares the folder; the other ranks follow its outcome
        finished = dist.run_on_main(lambda: _open_run(run, record, cfg, resume, evaluate_test))
    if finished is not None:
        return finished
    loop = _Loop(dataset, backbone, model_cfg, cfg, run, progress, on_epoch, method, method_cfg, evaluate_test, dist)
    return loop.run(resume=resume)


def _open_run(
    run: RunDir, record: dict[str, Any], cfg: TrainerConfig, resume: bool, evaluate_test: bool
) -> TrainResult | None:
    """The stored result of a finished run with these settings, else None once the folder is ready
    to train into (to be resumed, or cleared) with ``config.json`` written."""
    if run.has_run() and resume:
        old = run.read_json("config.json")
        try:
            problems = resume_mismatches(old, record)
        except (KeyError, TypeError, ConfigError) as exc:
            raise DataError(
                f"cannot compare with the stored run settings ({exc}); use --no-resume to replace it",
                path=run.config,
            ) from None
        if problems:
            raise IntentrecError(
                f"{run.path} holds a run with different settings; use another --out, or --no-resume "
                "to replace it:\n  " + "\n  ".join(problems)
            )
        finished = _finished_result(run, cfg, evaluate_test)
        if finished is not None:
            return finished
    else:
        run.clear()
    run.metrics.unlink(missing_ok=True)  # a stale metrics.json must never outlive new epochs
    write_record(run, record)
    return None


def _finished_result(run: RunDir, cfg: TrainerConfig, evaluate_test: bool = True) -> TrainResult | None:
    if not run.metrics.is_file():
        return None
    metrics = run.read_json("metrics.json")
    if evaluate_test and "test" not in metrics:
        return None  # finished without TEST (a tuning trial): the loop only evaluates the best checkpoint
    if not metrics.get("stopped_early") and metrics.get("epochs_run", 0) < cfg.epochs:
        return None  # asked for more epochs than the finished run had
    return _result(run, metrics)


def _result(run: RunDir, metrics: dict[str, Any]) -> TrainResult:
    return TrainResult(
        run_dir=run.path,
        selection=metrics["selection"],
        best_epoch=metrics["best_epoch"],
        epochs_run=metrics["epochs_run"],
        stopped_early=metrics["stopped_early"],
        valid=metrics.get("valid", {}),
        test=metrics.get("test", {}),
        metrics=metrics,
        history=run.read_log(),
    )


class _Loop:
    def __init__(
        self,
        dataset: PreparedDataset,
        backbone: str,
        model_cfg: BackboneConfig,
        cfg: TrainerConfig,
        run: RunDir,
        progress: bool | None,
        on_epoch: Callable[[dict[str, Any]], None] | None,
        method: str | None = None,
        method_cfg: MethodConfig | None = None,
        evaluate_test: bool = True,
        dist: Distributed | None = None,
    ):
        self.dataset, self.cfg, self.run_dir = dataset, cfg, run
        self.evaluate_test = evaluate_test
        self.dist = dist
        self.main = dist is None or dist.is_main  # the process that writes the run folder
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.main
        self.on_epoch = on_epoch if self.main else None
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        if cfg.keep_freed_memory:
            keep_freed_memory()
        self.device = resolve_device(cfg.device) if dist is None else dist.device
        self.cold: dict[str, Any] | None = None
        if cfg.cold_start is not None:
            dataset = self.dataset = self._hide_cold_items(dataset)

        self.train_set = dataset.examples("train")
        self.valid_set = dataset.examples("valid")
        self.test_set = dataset.examples("test")
        if len(self.train_set) == 0:
            raise DataError("the train split has no examples", path=dataset.path)
        if len(self.test_set) == 0:
            raise DataError("the test split has no examples", path=dataset.path)
        if len(self.valid_set) == 0 and not cfg.paper_mode:
            raise DataError(
                "the valid split has no examples; prepare the dataset with a validation split, or "
                "train with --select-on test (paper mode)",
                path=dataset.path,
            )

        self.eval_sample: dict[str, Any] | None = None
        if cfg.eval_sample is not None:
            self._sample_eval_splits()

        seed_everything(cfg.seed)
        self.model = build_session_model(backbone, model_cfg, dataset.num_items, method, method_cfg)
        if self.cold is not None and self.model.needs().candidates is not None:
            raise ConfigError(
                f"train.cold_start: '{self.model.registry_name}' reads a candidate file, which is built from "
                "the full train split (cold items included); train it without cold_start"
            )
        require_inputs(self.model, dataset)
        if dist is None:
            self.model.prepare(dataset)
        else:  # rank 0 first, so what prepare caches on disk is written once
            dist.main_first(lambda: self.model.prepare(dataset))
        self.model.to(self.device)
        # A model may lack features for some examples (an LLM stage that did not reach them): it
        # either refuses, or (a method's restrict_to_covered) the run uses only the covered examples.
        full = {s.split: len(s) for s in (self.train_set, self.valid_set, self.test_set)}
        self.train_set, self.valid_set, self.test_set = (
            self.model.select_examples(s) for s in (self.train_set, self.valid_set, self.test_set)
        )
        info = self.model.run_info()
        self.semantic: dict[str, Any] | None = None
        if info is not None:
            self.semantic = {
                **info,
                "examples_used": {s.split: len(s) for s in (self.train_set, self.valid_set, self.test_set)},
                "examples_total": full,
            }
        self.trains = self.model.needs().trains
        trainable = any(p.requires_grad for p in self.model.parameters())
        if self.trains and not trainable:
            raise ConfigError(f"'{self.model.registry_name}' says it trains but has no trainable parameter")
        # a model with nothing to learn (e.g. a similarity baseline) gets no optimiser at all
        # phases a model trains before its main epochs (an alignment stage), asked before its plan
        self.phases = self.model.training_phases() if self.trains else ()
        plan = self.model.training_plan(cfg, self.device) if trainable else TrainingPlan(optimizer=None)
        self.optimizer, self.scheduler, self.accumulate = plan.optimizer, plan.scheduler, plan.accumulate
        self.step_scheduler = plan.scheduler_interval == "step"
        if dist is not None:
            dist.run_on_main(lambda: dist.check_model(self.model, self.trains and self.optimizer is not None))
        self.state: dict[str, Any] = {
            "epoch": 0,
            "best_epoch": 0,
            "best_value": None,
            "bad_epochs": 0,
            "stopped_early": False,
            "history": [],
        }

    def _hide_cold_items(self, dataset: PreparedDataset) -> PreparedDataset:
        """The dataset without the cold items' interactions; their set is written to the run folder."""
        from intentrec.data.cold_items import ColdStartView, choose_cold_items

        cold = choose_cold_items(dataset, self.cfg.cold_start, self.cfg.cold_start_seed)
        recorded = cold.to_json(dataset)
        if self.main:
            write_json(self.run_dir / COLD_ITEMS, recorded)
        self.cold = {k: v for k, v in recorded.items() if k not in ("item_indices", "item_ids")}
        self.cold["file"] = COLD_ITEMS
        return ColdStartView(dataset, cold)

    def _sample_eval_splits(self) -> None:
        """``train.eval_sample``: valid and test become their seeded samples, before any model's own selection."""
        from intentrec.training.eval_sample import sample_examples

        cfg = self.cfg
        full = {"valid": len(self.valid_set), "test": len(self.test_set)}
        self.valid_set = sample_examples(self.valid_set, cfg.eval_sample, cfg.eval_sample_seed)
        self.test_set = sample_examples(self.test_set, cfg.eval_sample, cfg.eval_sample_seed)
        self.eval_sample = {
            "sample": cfg.eval_sample,
            "seed": cfg.eval_sample_seed,
            "examples": {"valid": len(self.valid_set), "test": len(self.test_set)},
            "examples_total": full,
        }

    # ------------------------------------------------------------------ main

    def run(self, *, resume: bool) -> TrainResult:
        run = self.run_dir
        if resume and run.last.is_file():
            self.state = load_training_state(run.last, self.model, self.optimizer, self.scheduler)
            # The state is the truth: a log line written after the last saved state is dropped,
            # one missing is restored, so resuming never duplicates or loses lines.
            if self.main:
                with atomic_open(run.log, "w", encoding="utf-8") as fh:
                    for rec in self.state["history"]:
                        fh.write(_json_line(rec))
        elif self.main:
            run.log.unlink(missing_ok=True)
            run.best.unlink(missing_ok=True)

        phase_epochs = [(phase, k) for phase in self.phases for k in range(1, phase.epochs + 1)]
        for phase, k in phase_epochs[self.state.get("phase_epochs", 0) :]:
            self._phase_epoch(phase, k)
        while self.state["epoch"] < self.cfg.epochs and not self.state["stopped_early"]:
            self._epoch(self.state["epoch"] + 1)
        return self._finish()

    def _phase_epoch(self, phase: TrainingPhase, k: int) -> None:
        """One epoch of a phase: trained, recorded in the resume state and metrics.json (not the log)."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        started = time.perf_counter()
        done = self.state.get("phase_epochs", 0)
        # shuffle seeds apart from the main epochs' (seed + epoch)
        seed = self.cfg.seed + 1_000_000 + done
        desc = f"{phase.name} {k}/{phase.epochs}"
        loss = self._train_one_epoch(k, examples=phase.examples, loss_fn=phase.loss, desc=desc, seed=seed)
        if not math.isfinite(loss):
            raise IntentrecError(f"training diverged: the loss is {loss} in {phase.name} epoch {k}; try a lower lr")
        record = {
            "phase": phase.name,
            "epoch": k,
            "loss": loss,
            "lr": lr,
            "examples": len(phase.examples),
            "train_seconds": round(time.perf_counter() - started, 3),
            "peak_rss_mb": peak_rss_mb(),
        }
        self.state["phase_epochs"] = done + 1
        self.state.setdefault("phases", []).append(record)
        if self.main:
            save_training_state(self.run_dir.last, self.model, self.optimizer, self.scheduler, self.state)
        self._sync_state()

    def _epoch(self, epoch: int) -> None:
        cfg, run = self.cfg, self.run_dir
        lr = float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else cfg.lr
        started = time.perf_counter()
        loss = self._train_one_epoch(epoch)
        train_seconds = time.perf_counter() - started
        if not math.isfinite(loss):
            raise IntentrecError(f"training diverged: the loss is {loss} in epoch {epoch}; try a lower train.lr")

        record: dict[str, Any] = {"epoch": epoch, "loss": loss, "lr": lr}
        if len(self.valid_set):
            record["valid"] = self._evaluate(self.valid_set)
        if cfg.paper_mode or cfg.track_test:
            record["test"] = self._evaluate(self.test_set)
        value = record["test" if cfg.paper_mode else "valid"][cfg.select_metric]
        best = self.state["best_value"]
        improved = best is None or value > best
        if improved:
            self.state.update(best_value=value, best_epoch=epoch, bad_epochs=0)
            if self.main:
                save_weights(run.best, self.model, {"epoch": epoch, cfg.select_metric: value})
        else:
            self.state["bad_epochs"] += 1
        if cfg.patience is not None and self.state["bad_epochs"] >= cfg.patience:
            self.state["stopped_early"] = True
        if self.scheduler is not None and self.trains and not self.step_scheduler:
            self.scheduler.step()

        record.update(
            improved=improved,
            best_epoch=self.state["best_epoch"],
            train_seconds=round(train_seconds, 3),
            seconds=round(time.perf_counter() - started, 3),
            peak_rss_mb=peak_rss_mb(),
        )
        if self.device.type == "cuda":
            record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        self.state["epoch"] = epoch
        self.state["history"].append(record)
        # Order matters for crash safety: the resume state (with this record) first, then the log.
        if self.main:
            save_training_state(run.last, self.model, self.optimizer, self.scheduler, self.state)
            append_jsonl(run.log, record)
        self._sync_state()
        if self.on_epoch is not None:
            self.on_epoch(record)

    def _train_one_epoch(
        self,
        epoch: int,
        *,
        examples: ExampleSet | None = None,
        loss_fn: Callable[[SessionBatch], torch.Tensor] | None = None,
        desc: str | None = None,
        seed: int | None = None,
    ) -> float:
        """One pass over ``examples`` (default: the train split, ``model.loss``, seed ``seed + epoch``)."""
        cfg = self.cfg
        examples = self.train_set if examples is None else examples
        loss_fn = self.model.loss if loss_fn is None else loss_fn
        if not self.trains:
            # nothing to learn (e.g. LLM4SBR's LLM-Infer ablation): one pass of evaluation only
            self.state["stopped_early"] = True
            return 0.0
        self.model.train()
        total = torch.zeros((), device=self.device)
        seen = 0
        num_batches = examples.num_batches(cfg.batch_size)
        bar = tqdm(
            total=num_batches,
            desc=f"epoch {epoch}/{cfg.epochs}" if desc is None else desc,
            unit="batch",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        seed = cfg.seed + epoch if seed is None else seed
        if self.dist is None:
            batches = examples.batches(cfg.batch_size, shuffle=True, seed=seed, max_length=cfg.max_length)
        else:  # this rank's shard of the same global batches
            batches = self.dist.batches(examples, cfg.batch_size, seed=seed, max_length=cfg.max_length)
        accumulate = self.accumulate
        for step, batch in enumerate(batches, start=1):
            batch = batch.to(self.device)
            # gradients of `accumulate` batches are summed (each loss scaled) before one step; a last
            # partial group still steps, so no batch's gradient is dropped (accumulate=1: every batch)
            if (step - 1) % accumulate == 0:
                self.optimizer.zero_grad(set_to_none=True)
            stepping = step % accumulate == 0 or step == num_batches
            if self.dist is None:
                loss = loss_fn(batch)
                (loss if accumulate == 1 else loss / accumulate).backward()
                loss_sum, count = loss.detach() * batch.size, batch.size
            else:  # gradients all-reduced over the ranks before each optimiser step
                loss_sum, count = self.dist.forward_backward(
                    self.model, loss_fn, batch, sync=stepping, accumulate=accumulate
                )
            if stepping:
                self.optimizer.step()
                if self.step_scheduler:
                    self.scheduler.step()
            total += loss_sum
            seen += count
            bar.update(1)
            if self.progress and step % _PROGRESS_SYNC_STEPS == 0:
                bar.set_postfix(loss=f"{total.item() / seen:.4f}")
        bar.close()
        if self.dist is not None:
            total, seen = self.dist.sum_loss(total, seen)
        return float(total.item() / max(seen, 1))

    def _evaluate(self, examples: ExampleSet) -> dict[str, float]:
        # with several processes each ranks a part and all gather: exact metrics over the whole split
        evaluate = evaluate_model if self.dist is None else self.dist.evaluate
        return evaluate(
            self.model,
            examples,
            ks=self.cfg.ks,
            batch_size=self.cfg.eval_batch_size,
            max_length=self.cfg.max_length,
            device=self.device,
        )

    # ------------------------------------------------------------------ results

    def _finish(self) -> TrainResult:
        cfg, run, state = self.cfg, self.run_dir, self.state
        history = state["history"]
        seconds = [rec["seconds"] for rec in history]
        train_seconds = [rec["train_seconds"] for rec in history]
        best_epoch = state["best_epoch"]
        best_record = history[best_epoch - 1]
        metrics: dict[str, Any] = {
            "selection": "",
            "select_metric": cfg.select_metric,
            "best_epoch": best_epoch,
            "epochs_run": state["epoch"],
            "max_epochs": cfg.epochs,
            "stopped_early": state["stopped_early"],
            "seconds_per_epoch_mean": round(float(np.mean(seconds)), 3) if seconds else None,
            "train_seconds_per_epoch_mean": (round(float(np.mean(train_seconds)), 3) if train_seconds else None),
            "seconds_total": round(float(np.sum(seconds)), 3),
            "num_examples": {
                "train": len(self.train_set),
                "valid": len(self.valid_set),
                "test": len(self.test_set),
            },
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if self.semantic is not None:
            metrics["semantic"] = self.semantic
        if self.cold is not None:
            metrics["cold_start"] = {
                **self.cold,
                "note": "train, valid and these test metrics exclude cold targets; cold items are removed from "
                "every input session (intentrec evaluate RUN --cold-start F ranks the cold targets from text)",
            }
        if cfg.paper_mode:
            test_max, argmax = _per_metric_max(history)
            metrics.update(
                selection=PAPER_MODE_SELECTION,
                warning=PAPER_MODE_WARNING,
                test=test_max,
                test_argmax_epoch=argmax,
                test_at_best_epoch=best_record["test"],
                per_epoch=_per_epoch(history),
            )
            if len(self.valid_set):
                honest = max(history, key=lambda r: r["valid"][cfg.select_metric])
                metrics["valid_selected"] = {
                    "epoch": honest["epoch"],
                    "valid": honest["valid"],
                    "test": honest["test"],
                }
        else:
            load_weights(run.best, self.model)
            metrics.update(
                selection=(
                    f"valid: checkpoint with the best {cfg.select_metric} on VALID "
                    f"(epoch {best_epoch}), evaluated once on TEST"
                ),
                valid=best_record["valid"],
            )
            if self.evaluate_test:
                metrics["test"] = self._evaluate(self.test_set)
            else:
                metrics["selection"] = (
                    f"valid: checkpoint with the best {cfg.select_metric} on VALID (epoch {best_epoch}); "
                    "TEST not evaluated (tuning)"
                )
            if cfg.track_test:
                test_max, argmax = _per_metric_max(history)
                metrics["test_max_over_epochs"] = {
                    "note": "analysis only: what paper mode would report (per-metric max over "
                    "epochs on TEST) for this same trajectory; never used for selection",
                    "test": test_max,
                    "test_argmax_epoch": argmax,
                }
                metrics["per_epoch"] = _per_epoch(history)
        if self.eval_sample is not None:
            metrics["selection"] += (
                f"; valid and test on a seeded sample of {cfg.eval_sample} examples (seed {cfg.eval_sample_seed})"
            )
            metrics["eval_sample"] = self.eval_sample
        if "phases" in state:
            metrics["phases"] = state["phases"]
        metrics["peak_rss_mb"] = peak_rss_mb()
        if self.main:
            write_json(run.metrics, metrics)
        if self.dist is not None:  # every rank returns rank 0's metrics (its timings and memory)
            metrics = self.dist.broadcast(metrics)
        return _result(run, metrics)

    def _sync_state(self) -> None:
        """DDP: every rank continues with rank 0's bookkeeping (best epoch, patience, early stop),
        received once rank 0 has written the epoch's files."""
        if self.dist is not None:
            self.state = self.dist.broadcast(self.state)


def epoch_line(record: dict[str, Any], metrics: tuple[str, ...], paper_mode: bool) -> str:
    """One line per finished epoch: loss, lr, the selection split's ``metrics``, time, memory, best mark."""
    split = "test" if paper_mode or "valid" not in record else "valid"
    values = record.get(split, {})
    shown = "  ".join(f"{k} {values[k]:.4f}" for k in metrics if k in values)
    mark = "  * best" if record.get("improved") else ""
    return (
        f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}  lr {record['lr']:.2g}  {split} {shown}  "
        f"{record['seconds']:.1f}s  {record['peak_rss_mb']:.0f}MB{mark}"
    )


def _per_metric_max(history: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int]]:
    """Per metric, the best TEST value over epochs and the (first) epoch that reached it."""
    keys = list(history[0]["test"])
    argmax = {k: max(history, key=lambda r, k=k: r["test"][k])["epoch"] for k in keys}
    return {k: history[argmax[k] - 1]["test"][k] for k in keys}, argmax


def _per_epoch(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"epoch": r["epoch"], "valid": r.get("valid"), "test": r["test"]} for r in history]


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str) + "\n"
