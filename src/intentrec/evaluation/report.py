"""Comparison tables over finished run folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from intentrec.errors import IntentrecError


def read_run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Model, selection mode and metrics of one finished run folder."""
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.json"
    if not config_path.is_file():
        raise IntentrecError(f"{run_dir}: not a run folder (no config.json)")
    if not metrics_path.is_file():
        raise IntentrecError(
            f"{run_dir}: training has not finished (no metrics.json); resume it with 'intentrec train'"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IntentrecError(f"{run_dir}: unreadable run file: {exc}") from None
    return {
        "run": str(run_dir),
        "model": config["model"]["name"],
        "selection": metrics["selection"],
        "paper_mode": "paper-mode" in metrics["selection"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "seconds_per_epoch": metrics.get("seconds_per_epoch_mean"),
        "peak_rss_mb": metrics.get("peak_rss_mb"),
        "valid": metrics.get("valid", {}),
        "test": metrics["test"],
    }


def metric_columns(summaries: list[dict[str, Any]]) -> list[str]:
    """Metric names in a stable order: by k, then HR, MRR, NDCG."""
    names = {name for s in summaries for name in s["test"]}
    order = {"HR": 0, "MRR": 1, "NDCG": 2}

    def key(name: str) -> tuple[int, int]:
        metric, k = name.split("@")
        return int(k), order.get(metric, 9)

    return sorted(names, key=key)
