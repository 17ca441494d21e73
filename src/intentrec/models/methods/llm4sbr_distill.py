"""Intent distillation: the LLM's LLM4SBR views without an LLM at request time.

Teacher
    The LLM answers both LLM4SBR views (``llm4sbr-long`` / ``llm4sbr-short``) for a seeded sample of
    *train* examples through :func:`intentrec.semantic.infer.run_inference` (the resumable answer
    store: answers already stored are linked, never asked again). The answers are parsed, encoded
    and localized by :func:`intentrec.semantic.intents.compute_intents` — the code the ``llm``
    source of LLM4SBR uses — into one target vector per example and view.
Student
    A small model from the session's item titles to those targets. ``kind=head`` (default): the
    frozen unit title vectors of the session's last ``window`` clicks (the clicks the teacher's
    prompt shows), per view an additive attention over them (query: the last click) plus the mean
    and the last click, an MLP on ``[attention; mean; last]`` added to the attention readout.
    ``kind=finetune``: the sentence encoder itself, fine-tuned with sentence-transformers' MSE
    distillation loss on the session's listed titles (prefixed by the view), in a plain torch loop
    (sentence-transformers' Trainer needs the ``datasets`` package, which the project does not use).
    Loss: 1 − cosine to the target (``head``). Training stops early and keeps the epoch with the best
    mean cosine to the teacher on held-out examples: the sampled examples of a seeded ``holdout``
    share of the sampled *sessions* (prefixes of one session never straddle fit and held-out).
    A student vector is the prediction scaled to unit length times the mean norm of the fit targets
    (localized targets are convex combinations of unit title vectors, so their norm is below 1).

Folder written by :func:`distill` (built under a temporary name, then renamed into place)::

    student.safetensors       head weights (kind=head), target norms per view
    encoder/                  the fine-tuned Sentence-Transformers model (kind=finetune)
    student.json              identity (dataset fingerprint, encoder, templates, teacher, sample,
                              k, window) and the training report
    teacher.<template>.safetensors (+ .json)   the localized teacher targets and their coverage

:func:`distilled_views` turns a student into one vector per example of every split, cached in
``DATASET/semantic/views.distilled-<view>.<student sha256[:12]>.safetensors``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from intentrec.config import Config
from intentrec.data import schema
from intentrec.data.batch import pad_csr
from intentrec.data.dataset import PreparedDataset, all_examples
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.io import sha256_file, write_json
from intentrec.semantic.encoders import TextEncoder, get_encoder
from intentrec.semantic.llm.base import DecodingConfig, LLMBackend
from intentrec.semantic.prompts import get_template, llm4sbr_view_template

FORMAT = "intentrec-student/1"
WEIGHTS = "student.safetensors"
IDENTITY = "student.json"
ENCODER_DIR = "encoder"
_PREDICT_BATCH = 4096


class StudentConfig(Config):
    """How the student is built and trained (``--student-set key=value``)."""

    kind: Literal["head", "finetune"] = Field("head", description="MLP head on frozen title vectors, or fine-tune")
    views: list[Literal["long", "short", "normal"]] = Field(default_factory=lambda: ["long", "short"])
    prompts: Literal["standard", "compact"] = Field("standard", description="wording of the teacher's view prompts")
    k: int = Field(3, ge=0, description="localization neighbours of the teacher answers (as method.k)")
    hidden: int = Field(512, ge=8)
    attention: int = Field(128, ge=4, description="width of the additive attention")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(300, ge=1, description="kind=head: maximum epochs")
    patience: int = Field(30, ge=1, description="epochs without a better held-out cosine before stopping")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(64, ge=1)
    holdout: float = Field(0.2, gt=0.0, lt=1.0, description="share of the sampled sessions held out")
    seed: int = 0
    finetune_epochs: int = Field(3, ge=1, description="kind=finetune: maximum epochs")
    finetune_lr: float = Field(2e-5, gt=0)
    finetune_batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check(self) -> StudentConfig:
        if not self.views:
            raise ValueError("views is empty: give at least one of long, short, normal")
        return self


# --------------------------------------------------------------------------------------------- model
class HeadStudent(nn.Module):
    """Per view: additive attention over the frozen title vectors + MLP residual (module doc)."""

    def __init__(self, catalogue: np.ndarray, views: list[str], *, hidden: int, attention: int, dropout: float):
        super().__init__()
        dim = int(catalogue.shape[1])
        table = np.concatenate([np.zeros((1, dim), np.float32), np.asarray(catalogue, np.float32)])
        # row 0 = padding; frozen and not saved (rebuilt from the dataset's titles and the encoder)
        self.register_buffer("titles", torch.from_numpy(table), persistent=False)
        self.views = list(views)
        self.att_items = nn.ModuleDict({v: nn.Linear(dim, attention, bias=False) for v in views})
        self.att_last = nn.ModuleDict({v: nn.Linear(dim, attention) for v in views})
        self.att_out = nn.ModuleDict({v: nn.Linear(attention, 1, bias=False) for v in views})
        self.mlp = nn.ModuleDict(
            {
                v: nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
                for v in views
            }
        )
        for v in views:  # start at the attention readout: the MLP learns the correction
            nn.init.zeros_(self.mlp[v][-1].weight)
            nn.init.zeros_(self.mlp[v][-1].bias)

    def forward(self, items: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.titles[items]  # [B, L, d]
        mask = torch.arange(items.shape[1], device=items.device)[None, :] < lengths[:, None]
        last = x[torch.arange(len(items), device=items.device), (lengths - 1).clamp(min=0)]
        mean = (x * mask[..., None]).sum(1) / lengths.clamp(min=1)[:, None].to(x.dtype)
        out = {}
        for v in self.views:
            e = self.att_out[v](torch.tanh(self.att_items[v](x) + self.att_last[v](last)[:, None])).squeeze(-1)
            alpha = torch.softmax(e.masked_fill(~mask, -1e9), dim=1)
            pooled = (alpha[..., None] * x).sum(1)
            out[v] = pooled + self.mlp[v](torch.cat([pooled, mean, last], dim=1))
        return out


def _cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(pred, target, dim=-1, eps=1e-8)


# --------------------------------------------------------------------------------------------- student
@dataclass
class Student:
    """A trained student: predicts each view's intent vector from a session's items."""

    folder: Path
    identity: dict[str, Any]
    head: HeadStudent | None = None
    encoder: TextEncoder | None = None  # kind=finetune
    titles: list[str] = field(default_factory=list)  # kind=finetune: item text by column
    weights_sha256: str = ""

    @property
    def views(self) -> list[str]:
        return list(self.identity["views"])

    @property
    def window(self) -> int:
        return int(self.identity["window"])

    def predict(self, values: np.ndarray, offsets: np.ndarray, *, progress: bool = False) -> dict[str, np.ndarray]:
        """Unit-scaled student vectors [N, d] per view for the sequences of a CSR (item indices)."""
        from tqdm import tqdm

        n = len(offsets) - 1
        norms = self.identity["target_norm"]
        out: dict[str, list[np.ndarray]] = {v: [] for v in self.views}
        ids = np.arange(n)
        starts = range(0, n, _PREDICT_BATCH)
        bar = tqdm(starts, desc="student vectors", unit="batch", disable=not progress, file=sys.stderr)
        for start in bar:
            rows = ids[start : start + _PREDICT_BATCH]
            if self.head is not None:
                batch = pad_csr(values, offsets, rows, ids, None, self.window)
                with torch.no_grad():
                    pred = self.head.eval()(batch.items, batch.lengths)
                chunk = {v: p.numpy() for v, p in pred.items()}
            else:
                chunk = {
                    v: self.encoder.encode(session_texts(self.titles, values, offsets, rows, self.window, v))
                    for v in self.views
                }
            for v in self.views:
                out[v].append(chunk[v])
        result = {}
        for v in self.views:
            raw = np.concatenate(out[v]) if out[v] else np.zeros((0, int(self.identity["dim"])), np.float32)
            unit = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
            result[v] = (unit * float(norms[v])).astype(np.float32)
        return result


def session_texts(
    titles: list[str], values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, window: int, view: str
) -> list[str]:
    """kind=finetune input: the view's name, then the titles of the last ``window`` clicks, one a line."""
    texts = []
    for r in rows:
        items = values[max(offsets[r], offsets[r + 1] - window) : offsets[r + 1]]
        texts.append(f"{view} intent:\n" + "\n".join(titles[int(i) - 1] for i in items))
    return texts


def load_student(folder: str | Path) -> Student:
    """A student folder written by :func:`distill` (kind ``head`` or ``finetune``)."""
    folder = Path(folder)
    path = folder / IDENTITY
    if not path.is_file():
        raise DataError(f"not a student folder (no {IDENTITY}); train one with 'intentrec distill'", path=folder)
    try:
        identity = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc}", path=path) from None
    if identity.get("format") != FORMAT:
        raise DataError(f"unknown student format {identity.get('format')!r} (expected {FORMAT})", path=path)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise DataError(f"student weights {WEIGHTS} are missing", path=folder)
    return Student(folder, identity, weights_sha256=sha256_file(weights))


def student_problems(identity: dict[str, Any], *, fingerprint: str, encoder_key: str, k: int) -> list[str]:
    """What makes a student unusable for this dataset / encoder / k (empty: usable)."""
    problems = []
    if identity.get("dataset_fingerprint") != fingerprint:
        problems.append(
            f"it was trained on another dataset (fingerprint {str(identity.get('dataset_fingerprint'))[:12]}…, "
            f"this dataset is {fingerprint[:12]}…)"
        )
    if identity.get("encoder_key") != encoder_key:
        model = (identity.get("encoder") or {}).get("model", "?")
        problems.append(
            f"it was trained with another text encoder ({model}, key {identity.get('encoder_key')}; "
            f"method.encoder gives key {encoder_key})"
        )
    if int(identity.get("k", -1)) != k:
        problems.append(f"its teacher targets were localized with k={identity.get('k')}, method.k is {k}")
    return problems


def attach_student(student: Student, dataset: PreparedDataset, encoder: TextEncoder, catalogue: np.ndarray) -> None:
    """Load the student's model for ``dataset`` (after :func:`student_problems` found none)."""
    from safetensors.torch import load_file

    ident = student.identity
    if ident["kind"] == "head":
        cfg = ident["config"]
        head = HeadStudent(
            catalogue, ident["views"], hidden=cfg["hidden"], attention=cfg["attention"], dropout=cfg["dropout"]
        )
        state = load_file(str(student.folder / WEIGHTS))
        state.pop("target_norm", None)
        missing, unexpected = head.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise DataError(
                f"student weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})",
                path=student.folder / WEIGHTS,
            )
        student.head = head.eval()
    else:
        student.encoder = get_encoder(str(student.folder / ENCODER_DIR))
        student.titles = _item_texts(dataset)


def _item_texts(dataset: PreparedDataset) -> list[str]:
    from intentrec.semantic.intents import catalogue_texts

    return catalogue_texts(dataset)[0]


def distilled_views(
    dataset_dir: str | Path,
    student_dir: str | Path,
    encoder: TextEncoder,
    *,
    views: tuple[str, ...],
    k: int,
    catalogue: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], Student]:
    """The ``distilled`` source: one FeatureTable per view for every example of every split.

    A student made for another dataset, encoder or k, or lacking a view, is one :class:`ConfigError`.
    """
    from intentrec.models.features import FeatureTable
    from intentrec.models.methods.llm4sbr_features import load_if_current
    from intentrec.semantic.intents import SEMANTIC_DIR, embed_catalogue, write_safetensors
    from intentrec.semantic.store import dataset_fingerprint

    dataset_dir = Path(dataset_dir)
    student = load_student(student_dir)
    fingerprint = dataset_fingerprint(dataset_dir)
    problems = student_problems(student.identity, fingerprint=fingerprint, encoder_key=encoder.identity_key(), k=k)
    lacking = [v for v in views if v not in student.views]
    if lacking:
        problems.append(f"it has no view {lacking} (it has {student.views})")
    if problems:
        raise ConfigError(f"method.student={student_dir} does not fit this run: " + "; ".join(problems))
    dataset = PreparedDataset(dataset_dir)
    if catalogue is None:
        catalogue = embed_catalogue(dataset_dir, encoder, normalize=True).vectors
    attach_student(student, dataset, encoder, catalogue)
    tables: dict[str, Any] = {}
    todo = []
    metas = {}
    for view in views:
        meta = {
            "source": "distilled",
            "view": view,
            "student": str(student_dir),
            "student_sha256": student.weights_sha256,
            "student_kind": student.identity["kind"],
            "teacher": student.identity["teacher"],
            "template": student.identity["templates"][view],
            "dataset_fingerprint": fingerprint,
            "encoder_key": encoder.identity_key(),
            "k": k,
        }
        path = dataset_dir / SEMANTIC_DIR / f"views.distilled-{view}.{student.weights_sha256[:12]}.safetensors"
        cached = load_if_current(path, meta)
        metas[view] = (meta, path)
        if cached is None:
            todo.append(view)
        else:
            tables[view] = FeatureTable(
                cached[0], cached[1], np.ones(len(cached[0]), bool), info=meta | {"file": path.name}
            )
    if todo:
        ids, values, offsets = all_examples(dataset)
        predicted = student.predict(values, offsets, progress=progress)
        for view in todo:
            meta, path = metas[view]
            write_safetensors(path, {"example_ids": ids, "vectors": predicted[view]}, meta)
            tables[view] = FeatureTable(ids, predicted[view], np.ones(len(ids), bool), info=meta | {"file": path.name})
    return {v: tables[v] for v in views}, student


# --------------------------------------------------------------------------------------------- teacher
@dataclass
class TeacherResult:
    reports: dict[str, dict[str, Any]]  # view -> InferReport.to_dict()
    identity: dict[str, str]
    rows: np.ndarray  # positions in the train split of the sampled examples
    seconds: float
    generated: int
    seed: int


def run_teacher(
    dataset_dir: str | Path,
    *,
    llm: str | LLMBackend,
    views: list[str],
    sample: int,
    seed: int,
    store,
    decoding: DecodingConfig | None = None,
    llm_options: dict[str, Any] | None = None,
    chunk_size: int = 64,
    generate: bool = True,
    progress: bool = True,
    prompts: str = "standard",
) -> TeacherResult:
    """Answers of every view for the seeded sample of train examples (resumable, see module doc).

    The LLM is loaded once, and only if some answer is missing.
    """
    from intentrec.semantic.infer import run_inference, select_rows
    from intentrec.semantic.llm import get_llm, resolve_llm_identity

    decoding = decoding or DecodingConfig()
    started = time.perf_counter()
    dataset = PreparedDataset(dataset_dir)
    rows = select_rows(len(dataset.examples("train")), limit=None, sample=sample, seed=seed)
    identity = llm.identity() if isinstance(llm, LLMBackend) else resolve_llm_identity(llm, **(llm_options or {}))
    common = dict(split="train", rows=rows, decoding=decoding, store=store, chunk_size=chunk_size)
    # A dry run links what is stored and counts what is missing, without loading the model.
    planned = {
        v: run_inference(
            dataset_dir,
            template=llm4sbr_view_template(v, prompts),
            llm=llm,
            llm_options=llm_options,
            dry_run=True,
            progress=False,
            **common,
        )
        for v in views
    }
    reports = {v: r.to_dict() for v, r in planned.items()}
    generated = 0
    if generate and any(r.covered < r.examples for r in planned.values()):
        backend = llm if isinstance(llm, LLMBackend) else get_llm(llm, **(llm_options or {}))
        try:
            for v in views:
                if planned[v].covered < planned[v].examples:
                    report = run_inference(
                        dataset_dir,
                        template=llm4sbr_view_template(v, prompts),
                        llm=backend,
                        progress=progress,
                        **common,
                    )
                    reports[v] = report.to_dict()
                    generated += report.generated
        finally:
            if backend is not llm:
                backend.close()
    return TeacherResult(reports, identity, rows, time.perf_counter() - started, generated, seed)


# --------------------------------------------------------------------------------------------- training
@dataclass
class DistillResult:
    folder: Path
    identity: dict[str, Any]


def _train_sessions(dataset: PreparedDataset) -> np.ndarray:
    """Session index of each train example, in the split's file order."""
    table = pq.read_table(dataset.path / schema.EXAMPLES, columns=["example_id", "split", "session_index"])
    split = np.asarray(table.column("split").to_numpy(zero_copy_only=False))
    ids = np.asarray(table.column("example_id").to_numpy())[split == "train"]
    sessions = np.asarray(table.column("session_index").to_numpy())[split == "train"]
    if not np.array_equal(ids, dataset.examples("train").example_ids):
        raise DataError("examples.parquet: train example order differs between reads", path=dataset.path)
    return sessions


def holdout_mask(sessions: np.ndarray, share: float, seed: int) -> np.ndarray:
    """True for examples whose session falls in a seeded ``share`` of the distinct sessions (≥ 1)."""
    distinct = np.unique(sessions)
    n_out = min(max(1, int(round(share * len(distinct)))), max(len(distinct) - 1, 1))
    chosen = np.random.default_rng(seed).permutation(distinct)[:n_out]
    return np.isin(sessions, chosen)


def _titles_baseline(catalogue: np.ndarray, values, offsets, window: int | None, k: int) -> np.ndarray:
    """What the ``titles`` source would give: the view's mean title vector, localized."""
    from intentrec.models.methods.llm4sbr_features import window_means
    from intentrec.semantic.localization import l2_normalise, localize

    raw = l2_normalise(window_means(catalogue, values, offsets, window))
    return localize(raw, catalogue, k, method="exact") if k else raw


def _mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        _cosine(torch.from_numpy(np.asarray(a, np.float32)), torch.from_numpy(np.asarray(b, np.float32))).mean()
    )


def train_head(
    catalogue: np.ndarray,
    batches: dict[str, Any],
    cfg: StudentConfig,
    *,
    window: int,
    progress: bool = True,
) -> tuple[HeadStudent, dict[str, Any]]:
    """Fit the head on ``batches['fit']`` and keep the epoch with the best held-out mean cosine."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    head = HeadStudent(catalogue, cfg.views, hidden=cfg.hidden, attention=cfg.attention, dropout=cfg.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fit, held = batches["fit"], batches["held"]
    generator = torch.Generator().manual_seed(cfg.seed)

    def held_cos() -> dict[str, float]:
        head.eval()
        with torch.no_grad():
            pred = head(held["items"], held["lengths"])
        per = {v: float(_cosine(pred[v], held["targets"][v]).mean()) for v in cfg.views}
        return per | {"mean": float(np.mean(list(per.values())))}

    best = held_cos()
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    best_epoch, history, waited = 0, [{"epoch": 0, "held_out_cosine": best["mean"]}], 0
    bar = tqdm(range(1, cfg.epochs + 1), desc="student", unit="epoch", disable=not progress, file=sys.stderr)
    for epoch in bar:
        head.train()
        order = torch.randperm(len(fit["items"]), generator=generator)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            pred = head(fit["items"][idx], fit["lengths"][idx])
            loss = sum((1 - _cosine(pred[v], fit["targets"][v][idx])).mean() for v in cfg.views) / len(cfg.views)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        score = held_cos()
        history.append({"epoch": epoch, "loss": total / len(order), "held_out_cosine": score["mean"]})
        if score["mean"] > best["mean"] + 1e-6:
            best, best_epoch, waited = score, epoch, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            waited += 1
        bar.set_postfix(cos=f"{score['mean']:.4f}", best=f"{best['mean']:.4f}@{best_epoch}")
        if waited >= cfg.patience:
            break
    head.load_state_dict(best_state)
    return head.eval(), {"best_epoch": best_epoch, "epochs_run": len(history) - 1, "held_out": best, "history": history}


def train_finetune(
    encoder_spec: str,
    titles: list[str],
    data: dict[str, Any],
    cfg: StudentConfig,
    *,
    window: int,
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the sentence encoder (sentence-transformers' MSELoss) and keep its best epoch."""
    from tqdm import tqdm

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise IntentrecError("kind=finetune needs sentence-transformers: pip install 'intentrec[semantic]'") from None
    try:  # sentence-transformers >= 6 moved the losses; the old path warns there
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        from sentence_transformers import losses
    base = get_encoder(encoder_spec)
    folder = getattr(base, "folder", None)
    if folder is None or not (Path(folder) / "modules.json").is_file():
        raise ConfigError(
            f"kind=finetune needs a Sentence-Transformers encoder (minilm, mpnet, st:PATH), got {encoder_spec}"
        )
    torch.manual_seed(cfg.seed)
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    loss_fn = losses.MSELoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.finetune_lr, weight_decay=cfg.weight_decay)

    def texts_targets(part: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
        texts, targets = [], []
        for v in cfg.views:
            texts += session_texts(titles, part["values"], part["offsets"], np.arange(part["n"]), window, v)
            targets.append(part["targets"][v])
        return texts, torch.cat(targets)

    fit_texts, fit_targets = texts_targets(data["fit"])
    held_texts, held_targets = texts_targets(data["held"])
    # MSE to unit targets: the encoder's output is compared after normalisation, as used
    fit_targets = F.normalize(fit_targets, dim=-1)

    def held_cos() -> dict[str, float]:
        model.eval()
        pred = model.encode(held_texts, convert_to_tensor=True, show_progress_bar=False, batch_size=64)
        cos = _cosine(pred.cpu().float(), held_targets).reshape(len(cfg.views), -1).mean(1)
        per = {v: float(c) for v, c in zip(cfg.views, cos)}
        return per | {"mean": float(np.mean(list(per.values())))}

    best, best_epoch, history, waited = held_cos(), 0, [], 0
    model.save(str(out_dir), safe_serialization=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6
    for epoch in range(1, cfg.finetune_epochs + 1):
        model.train()
        order = torch.randperm(len(fit_texts), generator=generator).tolist()
        steps = range(0, len(order), cfg.finetune_batch_size)
        bar = tqdm(steps, desc=f"fine-tune epoch {epoch}", unit="batch", disable=not progress, file=sys.stderr)
        for start in bar:
            idx = order[start : start + cfg.finetune_batch_size]
            features = tokenize([fit_texts[i] for i in idx])
            loss = loss_fn([features], fit_targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = held_cos()
        history.append({"epoch": epoch, "held_out_cosine": score["mean"]})
        if score["mean"] > best["mean"] + 1e-6:
            best, best_epoch, waited = score, epoch, 0
            shutil.rmtree(out_dir)
            model.save(str(out_dir), safe_serialization=True)
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    return {"best_epoch": best_epoch, "epochs_run": len(history), "held_out": best, "history": history}


def student_data(
    train, parts: dict[str, np.ndarray], targets: dict[str, np.ndarray], window: int
) -> dict[str, dict[str, Any]]:
    """Inputs and targets of the ``fit`` / ``held`` rows (positions in the train split)."""
    data: dict[str, dict[str, Any]] = {}
    for name, part in parts.items():
        batch = pad_csr(train.values, train.offsets, part, train.example_ids, None, window)
        sub = train.subset(part)
        data[name] = {
            "items": batch.items,
            "lengths": batch.lengths,
            "values": sub.values,
            "offsets": sub.offsets,
            "n": len(part),
            "targets": {
                v: torch.from_numpy(np.ascontiguousarray(t[part], dtype=np.float32)) for v, t in targets.items()
            },
        }
    return data


def distill(
    dataset_dir: str | Path,
    *,
    llm: str | LLMBackend,
    sample: int,
    seed: int,
    out: str | Path,
    encoder: str = "minilm",
    config: StudentConfig | None = None,
    store_path: str | Path | None = None,
    decoding: DecodingConfig | None = None,
    llm_options: dict[str, Any] | None = None,
    chunk_size: int = 64,
    generate: bool = True,
    teacher_only: bool = False,
    progress: bool = True,
) -> DistillResult | TeacherResult:
    """Teacher answers → localized targets → student, written to ``out`` (see the module doc)."""
    from intentrec.semantic.intents import compute_intents, embed_catalogue
    from intentrec.semantic.store import AnswerStore, dataset_fingerprint

    cfg = config or StudentConfig()
    if sample < 2:
        raise ConfigError(f"--sample must be at least 2 (a fit and a held-out example), got {sample}")
    dataset_dir = Path(dataset_dir)
    dataset = PreparedDataset(dataset_dir)
    out = Path(out)
    if not teacher_only and out.exists() and not (out / IDENTITY).is_file():
        raise ConfigError(f"--out {out} exists and is not a student folder; choose another path")
    text_encoder = get_encoder(encoder)
    templates = {v: get_template(llm4sbr_view_template(v, cfg.prompts)) for v in cfg.views}
    window = min(t.options.max_session_items for t in templates.values())

    with AnswerStore(store_path) as store:
        teacher = run_teacher(
            dataset_dir,
            llm=llm,
            views=cfg.views,
            sample=sample,
            seed=seed,
            store=store,
            decoding=decoding,
            llm_options=llm_options,
            chunk_size=chunk_size,
            generate=generate,
            progress=progress,
            prompts=cfg.prompts,
        )
        if teacher_only:
            return teacher
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            started = time.perf_counter()
            train = dataset.examples("train")
            targets, present = {}, np.ones(len(train), bool)
            coverage = {}
            for v in cfg.views:
                result = compute_intents(
                    dataset_dir,
                    template=templates[v].name,
                    llm_identity=teacher.identity,
                    encoder=text_encoder,
                    k=cfg.k,
                    split="train",
                    store=store,
                    out=staging / f"teacher.{templates[v].name}.safetensors",
                )
                targets[v] = result.vectors
                present &= result.has_intent
                coverage[v] = {"with_intent": int(result.has_intent[teacher.rows].sum()), "sampled": len(teacher.rows)}
            targets_seconds = time.perf_counter() - started
            return _fit_and_save(
                dataset,
                text_encoder,
                encoder,
                cfg,
                teacher,
                targets,
                present,
                coverage,
                window,
                templates,
                staging=staging,
                out=out,
                targets_seconds=targets_seconds,
                decoding=decoding or DecodingConfig(),
                fingerprint=dataset_fingerprint(dataset_dir),
                progress=progress,
                catalogue=embed_catalogue(dataset_dir, text_encoder, normalize=True),
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _fit_and_save(
    dataset,
    text_encoder,
    encoder_spec,
    cfg,
    teacher,
    targets,
    present,
    coverage,
    window,
    templates,
    *,
    staging: Path,
    out: Path,
    targets_seconds: float,
    decoding: DecodingConfig,
    fingerprint: str,
    progress: bool,
    catalogue,
) -> DistillResult:
    from safetensors.torch import save_file

    train = dataset.examples("train")
    rows = teacher.rows[present[teacher.rows]]
    if len(rows) < 2:
        raise DataError(
            f"only {len(rows)} of the {len(teacher.rows)} sampled train examples have a usable teacher answer "
            f"for every view ({coverage}); run the teacher step (without --no-generate) first",
            path=dataset.path,
        )
    held_mask = holdout_mask(_train_sessions(dataset)[rows], cfg.holdout, cfg.seed)
    if held_mask.all() or not held_mask.any():
        raise DataError(
            f"the {len(rows)} usable sampled examples come from one session; sample more examples",
            path=dataset.path,
        )
    parts = {"fit": rows[~held_mask], "held": rows[held_mask]}
    vectors = catalogue.vectors
    started = time.perf_counter()
    data = student_data(train, parts, targets, window)
    if cfg.kind == "head":
        head, report = train_head(vectors, data, cfg, window=window, progress=progress)
        state = {k: v.contiguous() for k, v in head.state_dict().items()}
    else:
        titles = _item_texts(dataset)
        report = train_finetune(
            encoder_spec, titles, data, cfg, window=window, out_dir=staging / ENCODER_DIR, progress=progress
        )
        state = {}
    training_seconds = time.perf_counter() - started
    norms = {v: float(torch.linalg.vector_norm(data["fit"]["targets"][v], dim=1).mean()) for v in cfg.views}
    state["target_norm"] = torch.tensor([norms[v] for v in cfg.views], dtype=torch.float32)
    save_file(state, str(staging / WEIGHTS), metadata={"format": FORMAT, "views": ",".join(cfg.views)})

    held = data["held"]
    baseline = {}
    for v in cfg.views:
        w = None if v in ("long", "normal") else _short_window()
        base = _titles_baseline(vectors, held["values"], held["offsets"], w, cfg.k)
        baseline[v] = _mean_cos(base, held["targets"][v].numpy())
    baseline["mean"] = float(np.mean([baseline[v] for v in cfg.views]))
    identity = {
        "format": FORMAT,
        "kind": cfg.kind,
        "dataset": dataset.path.name,
        "dataset_fingerprint": fingerprint,
        "encoder": text_encoder.identity(),
        "encoder_key": text_encoder.identity_key(),
        "encoder_spec": encoder_spec,
        "catalogue_texts_sha256": catalogue.info.get("texts_sha256"),
        "dim": int(vectors.shape[1]),
        "views": list(cfg.views),
        "templates": {v: {"name": t.name, "version": t.version} for v, t in templates.items()},
        "window": window,
        "k": cfg.k,
        "teacher": teacher.identity,
        "decoding": decoding.key_dict(),
        "sample": {"split": "train", "size": len(teacher.rows), "seed": teacher.seed},
        "config": cfg.model_dump(mode="json"),
        "target_norm": norms,
        "examples": {
            "sampled": len(teacher.rows),
            "with_targets": len(rows),
            "fit": len(parts["fit"]),
            "held_out": len(parts["held"]),
            "coverage": coverage,
        },
        "held_out_cosine": {"student": report["held_out"], "titles": baseline},
        "best_epoch": report["best_epoch"],
        "epochs_run": report["epochs_run"],
        "history": report["history"],
        "seconds": {
            "teacher": round(teacher.seconds, 3),
            "targets": round(targets_seconds, 3),
            "training": round(training_seconds, 3),
        },
        "teacher_reports": {
            v: {
                k: r.get(k)
                for k in (
                    "examples",
                    "unique_prompts",
                    "already_stored",
                    "generated",
                    "covered",
                    "seconds",
                    "prompts_per_second",
                    "status_counts",
                )
            }
            for v, r in teacher.reports.items()
        },
        "generated_prompts": teacher.generated,
    }
    write_json(staging / IDENTITY, identity)
    _replace_dir(staging, out)
    return DistillResult(out, identity)


def _short_window() -> int:
    from intentrec.models.methods.llm4sbr import LLM4SBRConfig

    return int(LLM4SBRConfig.model_fields["short_window"].default)


def _replace_dir(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out``; an older ``out`` is replaced only then."""
    if out.exists():
        if not (out / IDENTITY).is_file():
            raise ConfigError(f"--out {out} exists and is not a student folder; choose another path")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def cosine_report(identity: dict[str, Any]) -> str:
    held = identity["held_out_cosine"]
    views = identity["views"]
    per = ", ".join(
        f"{v} {held['student'][v]:.4f} (titles {held['titles'][v]:.4f})" for v in views if v in held["student"]
    )
    return (
        f"held-out cosine to the teacher: student {held['student']['mean']:.4f}, titles {held['titles']['mean']:.4f}"
        + (f" [{per}]" if per else "")
    )


__all__ = [
    "StudentConfig",
    "Student",
    "distill",
    "distilled_views",
    "load_student",
    "run_teacher",
]
