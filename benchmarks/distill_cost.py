"""Cost of intent distillation: teacher prompts/s, student training time, student vectors/s.

    python benchmarks/distill_cost.py DATASET --llm qwen0.5b --prompts 64 --student-examples 2000 --threads 2
    python benchmarks/distill_cost.py DATASET --llm smollm2 --prompts 4 --student-examples 200 --epochs 3   # quick check

DATASET is a prepared dataset folder (e.g. the llm4sbr-beauty preset). Three measurements:

1. **Teacher**: the LLM answers both LLM4SBR views for a seeded sample of train examples (about
   ``--prompts`` prompts in all) into a fresh, temporary answer store, so every prompt is generated;
   the rate is generated prompts over the wall time of the generation (model loading excluded).
2. **Student training**: the default head student, trained for exactly ``--epochs`` epochs (no early
   stop) on ``--student-examples`` train examples. Its targets here are the ``titles`` view vectors,
   not LLM answers: the training cost depends on the number of examples and epochs, not on what the
   targets say, and this keeps the LLM out of this measurement.
3. **Student vectors**: the trained student's views for every example of every split (or the first
   ``--predict-limit``), in vectors per second (examples × views / s).

Run it on a quiet machine for numbers worth recording: nothing else should share the cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from intentrec.data.dataset import PreparedDataset, all_examples
from intentrec.models.methods.llm4sbr_distill import (
    Student,
    StudentConfig,
    _titles_baseline,
    _train_sessions,
    holdout_mask,
    run_teacher,
    student_data,
    train_head,
)
from intentrec.semantic.encoders import get_encoder
from intentrec.semantic.intents import embed_catalogue
from intentrec.semantic.llm import get_llm
from intentrec.semantic.llm.base import DecodingConfig
from intentrec.semantic.store import AnswerStore

VIEWS = ["long", "short"]
WINDOW = 20  # the prompts' max_session_items


def teacher_rate(dataset: Path, args: argparse.Namespace) -> dict[str, float]:
    backend = get_llm(args.llm, n_threads=args.threads, n_parallel=args.n_parallel)
    try:
        with tempfile.TemporaryDirectory() as tmp, AnswerStore(Path(tmp) / "answers.sqlite") as store:
            started = time.perf_counter()
            result = run_teacher(
                dataset,
                llm=backend,
                views=VIEWS,
                sample=max(1, args.prompts // len(VIEWS)),
                seed=0,
                store=store,
                decoding=DecodingConfig(max_tokens=args.max_tokens),
                progress=True,
            )
            seconds = time.perf_counter() - started
    finally:
        backend.close()
    return {"teacher prompts": result.generated, "teacher s": seconds, "teacher prompts/s": result.generated / seconds}


def student_cost(dataset: PreparedDataset, args: argparse.Namespace) -> dict[str, float]:
    encoder = get_encoder(args.encoder)
    catalogue = embed_catalogue(dataset.path, encoder, normalize=True)
    train = dataset.examples("train")
    rows = np.sort(
        np.random.default_rng(0).choice(len(train), size=min(args.student_examples, len(train)), replace=False)
    )
    sub = train.subset(rows)
    targets_rows = {
        v: _titles_baseline(catalogue.vectors, sub.values, sub.offsets, None if v == "long" else 3, 3) for v in VIEWS
    }
    targets = {v: np.zeros((len(train), catalogue.vectors.shape[1]), np.float32) for v in VIEWS}
    for v in VIEWS:
        targets[v][rows] = targets_rows[v]
    held = holdout_mask(_train_sessions(dataset)[rows], 0.2, 0)
    data = student_data(train, {"fit": rows[~held], "held": rows[held]}, targets, WINDOW)
    cfg = StudentConfig(epochs=args.epochs, patience=args.epochs)
    started = time.perf_counter()
    head, report = train_head(catalogue.vectors, data, cfg, window=WINDOW, progress=True)
    train_seconds = time.perf_counter() - started

    student = Student(
        Path("."),
        {"views": VIEWS, "window": WINDOW, "target_norm": dict.fromkeys(VIEWS, 1.0), "dim": catalogue.vectors.shape[1]},
        head=head,
    )
    _, values, offsets = all_examples(dataset)
    n = len(offsets) - 1 if args.predict_limit is None else min(args.predict_limit, len(offsets) - 1)
    started = time.perf_counter()
    student.predict(values, offsets[: n + 1], progress=True)
    predict_seconds = time.perf_counter() - started
    return {
        "student fit examples": int((~held).sum()),
        "student epochs": report["epochs_run"],
        "student train s": train_seconds,
        "student s/epoch": train_seconds / max(report["epochs_run"], 1),
        "student parameters": sum(p.numel() for p in head.parameters()),
        "vectors": n * len(VIEWS),
        "student vectors/s": n * len(VIEWS) / predict_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a prepared dataset folder")
    parser.add_argument("--llm", default="qwen0.5b", help="the teacher (default: qwen0.5b)")
    parser.add_argument("--prompts", type=int, default=64, help="teacher prompts, both views together (0: skip)")
    parser.add_argument("--max-tokens", type=int, default=48, help="decoding max_tokens (the default of infer)")
    parser.add_argument("--n-parallel", type=int, default=8)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--student-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--predict-limit", type=int, default=None, help="student vectors for the first N examples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = PreparedDataset(args.dataset)
    row: dict[str, float] = {}
    if args.prompts > 0:
        row |= teacher_rate(dataset.path, args)
    row |= student_cost(dataset, args)
    if args.json:
        print(json.dumps(row, sort_keys=True))
    else:
        for key, value in row.items():
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
