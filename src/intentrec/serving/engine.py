"""What ``intentrec serve`` holds in memory: the loaded runs, the catalogue, the top-K search.

Everything here is built once at start-up. Per request nothing shared is mutated: a batch reads the
catalogue's ``size`` once and scores against the rows published up to then. All model work (forward
passes, FAISS, embedding added items) runs in one worker thread, so torch and FAISS never see two
callers at once.

Added items are scored as ``intentrec evaluate --cold-start`` scores cold items (``--cold-calibration``,
``--cold-text-weight``; :mod:`intentrec.serving.cold_scoring`), or by their placed rows as they are
(``--cold-calibration none``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError, IntentrecError
from intentrec.models.base import BackboneOutput, SessionModel
from intentrec.models.cold_start import ColdScoringConfig
from intentrec.serving.cold_scoring import ColdScorer
from intentrec.serving.config import ServeConfig
from intentrec.serving.index import FaissIndex
from intentrec.serving.items import AddedItem, Catalogue, ItemStore
from intentrec.training.run import TrainedRun, load_run

log = logging.getLogger("intentrec.serve")


class RowMap(Protocol):
    """What the server needs of a cold-start map (``intentrec.models.cold_start.ColdStartMap``).

    The calibrated scoring with a text weight above 0 also needs ``text_encoder()`` (the encoder the
    map reads: ``encode(texts, normalize=True)``, ``identity_key()``); with ``rows_from_vectors(vectors)``
    as well, an added item's text is encoded once for both.
    """

    template: str  # how an item's fields become the text the map reads (semantic.item_texts)

    def rows(self, texts: list[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Query:
    """One request, resolved: model input (item indices), columns to exclude, how many to return."""

    history: tuple[int, ...]
    exclude: tuple[int, ...]
    k: int


@dataclass
class ServedRun:
    name: str
    path: Path
    trained: TrainedRun
    index_kind: str  # "exact" or a FAISS kind
    index: FaissIndex | None = None
    rows: RowMap | None = None  # cold-start map; None: items cannot be added (``cold_problem`` says why)
    cold_problem: str | None = None
    #: scoring_table() and then (calibration none) the added items' rows, once an item is added (published
    #: before ``size``); with a calibration, scoring_table() alone, set at start-up
    table: torch.Tensor | None = None
    #: what the calibrated scoring of added items keeps (None: calibration none, or items cannot be added)
    cold: ColdScorer | None = None

    @property
    def model(self) -> SessionModel:
        return self.trained.model

    @property
    def max_length(self) -> int | None:
        return self.trained.trainer.max_length


def parse_run_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``RUN`` or ``NAME=RUN`` → (name, path); names default to the folder name and must be unique."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        name = name.strip()
        if not name or not path:
            raise ConfigError(f"expected RUN or NAME=RUN, got {spec!r}")
        if name in {n for n, _ in out}:
            raise ConfigError(f"two runs are named '{name}'; name them with NAME=RUN")
        out.append((name, Path(path)))
    if not out:
        raise ConfigError("give at least one run folder")
    return out


def _probe_batch(device: torch.device, num_items: int) -> SessionBatch:
    """Two made-up sessions (not dataset examples) to check a model on before serving."""
    return SessionBatch.from_lists([[1], [1, min(2, num_items)]]).to(device)


def inner_product_problem(model: SessionModel, device: torch.device) -> str | None:
    """None if the model's scores rank items like ``session · item_table()`` (so an inner-product
    index returns its top-K), else why not. Checked on a probe batch: per row, the scores must be
    a positive multiple of those inner products."""
    if model.num_items < 2:
        return "the catalogue has fewer than two items"
    with torch.inference_mode():
        batch = _probe_batch(device, model.num_items)
        out = model.serve_output(batch)
        scores = model.score(out).float()
        products = (out.session.float() @ model.item_table().float().t()).float()
    for s, p in zip(scores, products):
        scale = float((s @ p) / (p @ p).clamp(min=1e-30))
        if not scale > 0:
            return "its scores are not a positive multiple of session · item table"
        err = float((s - scale * p).abs().max()) / max(float(s.abs().max()), 1e-12)
        if err > 1e-3:
            return f"its scores are not an inner product of the session vector and the item table (off by {err:.1e})"
    return None


def _load_rows_map(spec: str, trained: TrainedRun, encoder: str | None) -> RowMap:
    """The cold-start map named by ``--cold-start``: fitted now, loaded from a file, or a factory."""
    if spec.startswith("python:"):
        module, _, attr = spec[len("python:") :].partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"--cold-start {spec}: {exc}") from None
        return factory(trained.model, trained.dataset)
    try:
        cold = importlib.import_module("intentrec.models.cold_start")
    except ImportError as exc:
        raise IntentrecError(f"the cold-start map (intentrec.models.cold_start) is not available: {exc}") from None
    if spec == "fit":
        return cold.fit_cold_start_map(trained.model, trained.dataset, encoder=encoder, fitted_on=str(trained.run.path))
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--cold-start: expected fit, off, python:MODULE:FACTORY or a map file; no file {path}")
    return cold.ColdStartMap.load(path)


class Engine:
    """The loaded runs and catalogue; ``score`` is what the batchers call in the worker thread."""

    def __init__(self, runs: list[ServedRun], catalogue: Catalogue, cfg: ServeConfig, store: ItemStore | None):
        self.runs = {run.name: run for run in runs}
        self.default = runs[0].name
        self.catalogue = catalogue
        self.cfg = cfg
        self.store = store
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intentrec-model")
        if cfg.threads is not None:
            self.executor.submit(torch.set_num_threads, cfg.threads).result()

    # ------------------------------------------------------------------ start-up
    @classmethod
    def load(cls, run_specs: Sequence[str], cfg: ServeConfig) -> Engine:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        runs: list[ServedRun] = []
        catalogue: Catalogue | None = None
        for name, path in parse_run_specs(run_specs):
            trained = load_run(path, device=cfg.device)
            why = trained.model.capabilities()["serve"]
            if why is not None:
                raise IntentrecError(f"run '{name}' ({path}) cannot serve new sessions: {why}")
            try:  # a model that fails on a new session fails now, not at the first request
                with torch.inference_mode():
                    trained.model.serve_scores(_probe_batch(trained.device, trained.model.num_items))
            except IntentrecError as exc:
                raise IntentrecError(f"run '{name}' ({path}) cannot serve new sessions: {exc}") from None
            ids = trained.dataset.item_ids()
            if catalogue is None:
                catalogue = Catalogue.of(ids, trained.dataset.titles())
            elif ids != catalogue.ids[: catalogue.num_trained]:
                raise IntentrecError(
                    f"run '{name}' ({path}) was trained on another item catalogue than '{runs[0].name}'; "
                    "serve runs of different datasets with separate servers"
                )
            runs.append(ServedRun(name, path, trained, _index_kind(trained, cfg)))
        assert catalogue is not None
        for run in runs:
            if run.index_kind != "exact":
                table = run.model.item_table().detach().float().cpu().numpy()
                run.index = FaissIndex(table, run.index_kind)
                if cfg.faiss_breadth is not None:
                    run.index.search_breadth = cfg.faiss_breadth
            log.info("run '%s': %s, %d items, top-K by %s", run.name, run.path, run.model.num_items, run.index_kind)
        store = ItemStore(cfg.items_db) if cfg.items_db is not None else None
        engine = cls(runs, catalogue, cfg, store)
        engine._setup_cold_start()
        if store is not None and engine.cold_problem is None:
            engine.sync_items()
        return engine

    def _setup_cold_start(self) -> None:
        how = self.cfg.cold_scoring
        for run in self.runs.values():
            if self.store is None:
                run.cold_problem = "the server was started without --items-db"
            elif self.cfg.cold_start == "off":
                run.cold_problem = "cold start is turned off (--cold-start off)"
            elif (why := run.model.new_items_problem()) is not None:
                run.cold_problem = f"model '{run.model.registry_name}' cannot rank added items: {why}"
            else:
                _check_index_calibration(run, how)
                try:
                    run.rows = _load_rows_map(self.cfg.cold_start, run.trained, self.cfg.encoder)
                    probe = run.rows.rows(["probe"])
                    width = run.model.scoring_table().shape[1]
                    if tuple(probe.shape) != (1, width):
                        raise IntentrecError(
                            f"the cold-start map gives rows of shape {tuple(probe.shape)}, not (1, {width})"
                        )
                    if how.calibration != "none":
                        run.cold = _cold_scorer(run, how)
                        with torch.inference_mode():
                            run.table = run.model.scoring_table().detach().float()
                except IntentrecError as exc:
                    run.cold_problem = str(exc)
            if run.cold_problem is not None:
                log.warning("run '%s': items cannot be added: %s", run.name, run.cold_problem)
            else:
                log.info(
                    "run '%s': added items scored %s", run.name,
                    f"by calibration {how.calibration}, text weight {how.text_weight:g}" if run.cold is not None
                    else "by their placed rows as the model scores them (calibration none)",
                )  # fmt: skip

    @property
    def cold_problem(self) -> str | None:
        """Why items cannot be added (None: they can, for every run)."""
        problems = [f"{r.name}: {r.cold_problem}" for r in self.runs.values() if r.cold_problem is not None]
        return "; ".join(problems) or None

    # ------------------------------------------------------------------ added items (worker thread)
    def _rows_for(self, run: ServedRun, items: list[AddedItem]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The items' rows ``[m, d']`` and, where the calibrated scoring reads them, text vectors ``[m, w]``."""
        assert run.rows is not None
        text = None
        with torch.inference_mode():
            texts = [render_text(item, run.rows.template) for item in items]
            if run.cold is not None and run.cold.uses_text:
                text = run.cold.text_vectors(texts)
                from_vectors = getattr(run.rows, "rows_from_vectors", None)
                rows = from_vectors(text) if from_vectors is not None else run.rows.rows(texts)
                if not torch.isfinite(text).all():
                    raise IntentrecError("the text encoder gave non-finite vectors")
            else:
                rows = run.rows.rows(texts)
            rows = rows.detach().float().to(run.trained.device)
        if not torch.isfinite(rows).all():
            raise IntentrecError("the cold-start map gave non-finite rows")
        return rows, text

    def _publish(
        self, items: list[AddedItem], computed: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None
    ) -> None:
        if not items:
            return
        for run in self.runs.values():
            rows, text = computed[run.name] if computed is not None else self._rows_for(run, items)
            if run.cold is not None:  # calibrated: the index (if any) keeps the trained items only
                run.cold.add(rows, text)
                continue
            if run.table is None:
                with torch.inference_mode():
                    run.table = run.model.scoring_table().detach().float()
            run.table = torch.cat([run.table, rows])
            if run.index is not None:
                run.index.add(rows.cpu().numpy())
        self.catalogue.append(items)

    def sync_items(self) -> int:
        """Publish items stored since the last sync (by this or another worker); how many."""
        if self.store is None or self.cold_problem is not None:
            return 0
        items = [i for i in self.store.since(self.catalogue.last_seq) if i.item_id not in self.catalogue.lookup]
        self._publish(items)
        return len(items)

    def add_item(self, item_id: str, title: str, description: str | None, categories: list[str]) -> AddedItem:
        """Embed, commit, publish. Raises KeyError if the id exists. Call in the worker thread."""
        assert self.store is not None
        if item_id in self.catalogue.lookup:
            raise KeyError(item_id)
        probe = AddedItem(0, item_id, title, description, tuple(categories))
        computed = {run.name: self._rows_for(run, [probe]) for run in self.runs.values()}
        stored = self.store.add(item_id, title, description, categories)  # committed: now it may be acknowledged
        others = [i for i in self.store.since(self.catalogue.last_seq) if i.seq != stored.seq]
        self._publish([i for i in others if i.item_id not in self.catalogue.lookup])
        self._publish([stored], computed)
        return stored

    # ------------------------------------------------------------------ scoring (worker thread)
    def score(self, run: ServedRun, queries: Sequence[Query]) -> list[list[tuple[int, float]]]:
        """Top-k (column, score) of each query, best first, excluded and −inf columns dropped."""
        size = self.catalogue.size
        added = size - self.catalogue.num_trained
        model = run.model
        histories = [list(q.history[-run.max_length :] if run.max_length else q.history) for q in queries]
        with torch.inference_mode():
            batch = SessionBatch.from_lists(histories).to(run.trained.device)
            if run.index is not None:
                return self._search(run, batch, queries, size)
            if added == 0:
                scores = model.serve_scores(batch)
            elif run.cold is not None:  # the trained items as without added ones, the added calibrated to them
                assert run.table is not None
                output = model.serve_output(batch)
                warm = model.score_with(output, run.table).float()
                scores = torch.cat([warm, run.cold.exact(model, output, batch, warm, added)], 1)
            else:
                assert run.table is not None
                scores = model.score_with(model.serve_output(batch), run.table[:size])
            scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
            rows = [b for b, q in enumerate(queries) for _ in q.exclude]
            if rows:
                cols = [c for q in queries for c in q.exclude]
                scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
            top = torch.topk(scores, min(max(q.k for q in queries), scores.shape[1]))
            values, columns = top.values.cpu().tolist(), top.indices.cpu().tolist()
        return [_keep(v, c, q) for v, c, q in zip(values, columns, queries)]

    def _search(
        self, run: ServedRun, batch: SessionBatch, queries: Sequence[Query], size: int
    ) -> list[list[tuple[int, float]]]:
        assert run.index is not None
        out: BackboneOutput = run.model.serve_output(batch)
        want = max(q.k + len(q.exclude) for q in queries)
        found, at = run.index.search(out.session.float().cpu().numpy(), want)
        trained = self.catalogue.num_trained
        if run.cold is not None and size > trained:
            # the index holds the trained items; the added ones are scored exactly, calibrated, and merged
            cold = torch.nan_to_num(run.cold.linear(out.session, batch, size - trained), nan=float("-inf")).cpu()
            found_t, at_t = torch.from_numpy(found), torch.from_numpy(at).long()
            found_t = found_t.masked_fill(at_t < 0, float("-inf"))
            cold_at = torch.arange(trained, size).expand(cold.shape[0], -1)
            merged, merged_at = torch.cat([found_t, cold.to(found_t.dtype)], 1), torch.cat([at_t, cold_at], 1)
            top = torch.topk(merged, min(want, merged.shape[1]))
            values, columns = top.values.tolist(), merged_at.gather(1, top.indices).tolist()
        else:
            values, columns = found.tolist(), at.tolist()
        results = []
        for v, c, q in zip(values, columns, queries):
            kept = [(col, s) for col, s in zip(c, v) if 0 <= col < size]
            results.append(_keep([s for _, s in kept], [col for col, _ in kept], q))
        return results

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        if self.store is not None:
            self.store.close()


def _check_index_calibration(run: ServedRun, how: ColdScoringConfig) -> None:
    """A FAISS index gives the top-K inner products of the trained items, not all their scores: added
    items can be calibrated against that only by moments of the text similarity (closed form)."""
    if run.index is None or how.calibration == "none":
        return
    if how.calibration == "quantiles" or how.text_weight < 1:
        need = (
            "every trained item's score (their quantiles)"
            if how.calibration == "quantiles"
            else "every trained item's placed-row score (a text weight below 1)"
        )
        raise ConfigError(
            f"run '{run.name}': --index {run.index_kind} returns only the top-K of the trained items, and "
            f"--cold-calibration {how.calibration} --cold-text-weight {how.text_weight:g} needs {need}; with an "
            "index, added items are calibrated by --cold-calibration moments --cold-text-weight 1 (the default) or "
            "ranked uncalibrated (--cold-calibration none); or rank exactly (--index exact)"
        )


def _cold_scorer(run: ServedRun, how: ColdScoringConfig) -> ColdScorer:
    """The calibrated scoring's state: the trained catalogue's text vectors (the map's encoder and
    template) and/or its rows placed from them, and under a FAISS index the item table's moments."""
    assert run.rows is not None
    encoder = None
    vectors = None
    dataset_path = run.trained.dataset.path
    if how.text_weight > 0 or hasattr(run.rows, "rows_from_vectors"):
        get_encoder = getattr(run.rows, "text_encoder", None)
        if get_encoder is not None:
            encoder = get_encoder()
        elif how.text_weight > 0:
            raise IntentrecError(
                "the cold-start map has no text encoder (text_encoder()), which the session–item text cosine "
                f"of the calibrated scoring (--cold-text-weight {how.text_weight:g}) needs: serve with "
                "--cold-text-weight 0 (calibrate the placed rows' scores only) or --cold-calibration none"
            )
    if encoder is not None:
        from intentrec.semantic.intents import embed_catalogue

        catalogue = embed_catalogue(dataset_path, encoder, normalize=True, template=run.rows.template)
        vectors = torch.from_numpy(np.ascontiguousarray(catalogue.vectors, dtype=np.float32))
        if vectors.shape[0] != run.model.num_items:
            raise IntentrecError(f"{vectors.shape[0]} catalogue text vectors for {run.model.num_items} items")
    placed = None
    with torch.inference_mode():
        if how.text_weight < 1:
            if vectors is not None and hasattr(run.rows, "rows_from_vectors"):
                placed = run.rows.rows_from_vectors(vectors)  # type: ignore[attr-defined]
            else:
                from intentrec.data.dataset import PreparedDataset
                from intentrec.semantic.item_texts import item_texts

                placed = run.rows.rows(item_texts(PreparedDataset(dataset_path), run.rows.template)[0])
            if not torch.isfinite(placed).all():
                raise IntentrecError("the cold-start map gave non-finite rows for the trained items' texts")
        linear = run.index is not None or _scores_are_inner_products(run.model)
        item_table = run.model.item_table().detach().float() if linear else None
        return ColdScorer(
            how,
            run.model.num_items,
            text=vectors if how.text_weight > 0 else None,
            placed=placed,
            item_table=item_table,
            encoder=encoder,
            device=run.trained.device,
        )


def _scores_are_inner_products(model: SessionModel) -> bool:
    """True where ``score(output)`` is ``output.session · item_table()`` by construction (a backbone that
    keeps the plain dot product), so the warm scores' moments have a closed form."""
    from intentrec.models.base import Backbone

    return (
        isinstance(model, Backbone)
        and type(model).score is Backbone.score
        and type(model).score_with is Backbone.score_with
    )


def render_text(item: AddedItem, template: str) -> str:
    """The added item's text as ``template`` renders a catalogue item (``title/1``: its title)."""
    import pandas as pd

    from intentrec.semantic.item_texts import TEMPLATES

    render = TEMPLATES.get(template)
    if render is None:
        raise IntentrecError(f"the cold-start map reads texts of an unknown template '{template}'")
    frame = pd.DataFrame(
        {
            "item_id": [item.item_id],
            "title": [item.title],
            "categories": [", ".join(item.categories) or None],
            "description": [item.description],
        }
    )
    return render(frame)[0] or f"item {item.item_id}"


def _keep(values: list[float], columns: list[int], query: Query) -> list[tuple[int, float]]:
    excluded = set(query.exclude)
    out: list[tuple[int, float]] = []
    for col, score in zip(columns, values):
        if score == float("-inf") or col in excluded:
            continue
        out.append((col, score))
        if len(out) == query.k:
            break
    return out


def _index_kind(trained: TrainedRun, cfg: ServeConfig) -> str:
    kind = cfg.index
    if kind == "exact":
        return "exact"
    if kind == "auto" and trained.model.num_items <= cfg.faiss_above:
        return "exact"
    problem = inner_product_problem(trained.model, trained.device)
    if problem is None:
        return "faiss-hnsw" if kind == "auto" else kind
    if kind == "auto":
        log.warning("%s: ranking exactly, a FAISS index cannot serve this model: %s", trained.run.path, problem)
        return "exact"
    raise IntentrecError(f"--index {kind} cannot serve run {trained.run.path}: {problem} (use --index exact)")


@dataclass
class LoadedItem:
    """An item as GET /v1/items returns it."""

    item_id: str
    title: str | None
    source: str
    description: str | None = None
    categories: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "description": self.description,
            "categories": self.categories,
            "source": self.source,
        }


def item_of(catalogue: Catalogue, item_id: str) -> LoadedItem | None:
    col = catalogue.column(item_id, catalogue.size)
    if col is None:
        return None
    added = catalogue.added.get(col)
    if added is None:
        return LoadedItem(item_id, catalogue.titles[col], "catalogue")
    return LoadedItem(item_id, added.title, "added", added.description, list(added.categories))
