"""LLM-DMsRec's two intent groups per example: *explicit* and *latent*.

The LLM is shown a session and a candidate list and names the candidates that match the user's
intents, separated by ';'. Each named piece is

* **explicit** when it is one of the session's own clicked items (its text matches a clicked item's
  title after normalisation: Unicode NFKC, trimmed, case-folded, whitespace collapsed, an echoed
  item id removed — ``[ID: …]`` or a ``_<id>`` suffix such as ``Lipstick_B00ABC1234`` — a trailing
  ``…`` dropped, and the same answer clean-up as the parser; a clicked title also matches in the
  word-truncated forms the prompts show);
* **latent** otherwise (an item the user has not clicked).

If one group is empty it copies the other (the authors' rule), so every answered example has both.
Each piece is encoded once (masked mean pooling, unit length; :func:`encode_cached`) and a group's
vector is the mean of its pieces' vectors.

Sources (``source`` of the method config):

``llm``
    answers from the answer store (template ``dmsrec``); examples without a usable answer are
    *missing* (``present = False``).
``titles``
    no generation: explicit = the clicked items of the prefix that are among its top candidates;
    latent = the ``latent_top`` best candidates the prefix has not clicked. Each piece is exactly an
    item title, so E and L are means of the catalogue's title vectors (no new encoding).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from intentrec.data.dataset import PreparedDataset, all_examples
from intentrec.errors import DataError
from intentrec.models.features import FeatureTable
from intentrec.semantic.encoders import TextEncoder
from intentrec.semantic.parsing import clean_item_text

GROUPS = ("explicit", "latent")
TEMPLATE = "dmsrec"

_BRACKET_ID = re.compile(r"\s*[\(\[\{]\s*(?:item\s*)?id\s*[:#=]?\s*[^\)\]\}]{0,40}[\)\]\}]", re.I)
# an id cut off by the token limit: "[ID: B0" or a lone "[" at the very end
_UNCLOSED_ID = re.compile(r"\s*[\(\[\{]\s*(?:(?:item\s*)?id\b\s*[:#=]?\s*[^\)\]\}]{0,40})?$", re.I)
# "_<id>" at the end: a code with at least one digit (ASIN-like) or a plain number.
_SUFFIX_ID = re.compile(r"_(?:(?=[A-Za-z]*\d)[A-Za-z0-9]{6,20}|\d{1,12})$")
_ELLIPSIS = re.compile(r"(?:…|\.{3})$")
_EDGE = " \t\n.,;:!?-–—\"'“”‘’«»*"


def normalise_title(text: str | None, item_ids: Iterable[str] = ()) -> str:
    """The matching key of an item name: see the module docstring. ``item_ids``: ids to strip as
    ``_<id>`` suffixes even when they do not look like codes."""
    if not text:
        return ""
    item_ids = tuple(item_ids)
    text = unicodedata.normalize("NFKC", str(text))
    text = " ".join(text.split())
    for _ in range(2):  # an id and an ellipsis can come in either order
        text = _BRACKET_ID.sub("", text).strip(_EDGE + "…")
        text = _UNCLOSED_ID.sub("", text).strip(_EDGE + "…")
        for item_id in item_ids:
            if item_id and text.lower().endswith("_" + str(item_id).lower()):
                text = text[: -len(str(item_id)) - 1]
        text = _SUFFIX_ID.sub("", text)
        text = _ELLIPSIS.sub("", text).strip(_EDGE)
    return text.casefold()


def title_keys(
    title: str | None, item_id: str | None = None, *, word_limits: Sequence[int] = (24, 12), max_chars: int = 160
) -> set[str]:
    """Every key under which an answer may name this item: its full title and the truncated forms
    the prompts show (``word_limits`` words, ``max_chars`` characters), raw and parser-cleaned."""
    from intentrec.semantic.prompts import truncate_title

    if not title or not title.strip():
        return set()
    ids = (item_id,) if item_id else ()
    forms = {title, *(truncate_title(title, w, max_chars) for w in word_limits)}
    keys = {normalise_title(f, ids) for f in forms} | {normalise_title(clean_item_text(f), ids) for f in forms}
    keys.discard("")
    return keys


def split_intents(
    pieces: Sequence[str],
    clicked_titles: Iterable[str | None],
    clicked_ids: Iterable[str] = (),
) -> tuple[list[str], list[str]]:
    """``(explicit, latent)`` pieces of one answer; an empty group copies the other.

    A piece is explicit when its normalised text equals the normalised title (or a prompt-truncated
    form of it) of one of the clicked items. Order within each group follows ``pieces``.
    """
    keys: set[str] = set()
    for title in clicked_titles:
        keys |= title_keys(title)
    explicit, latent = split_by_keys(pieces, keys, [str(i) for i in clicked_ids if i])
    return explicit or latent, latent or explicit


def split_by_keys(
    pieces: Sequence[str], keys: set[str], clicked_ids: Sequence[str] = (), cache: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """``(explicit, latent)`` by matching keys, *without* the empty-group copy (callers count it).

    ``cache`` memoises the id-independent key of each piece across calls.
    """
    cache = {} if cache is None else cache
    explicit: list[str] = []
    latent: list[str] = []
    for piece in pieces:
        key = cache.get(piece)
        if key is None:
            key = cache[piece] = normalise_title(piece)
        if not key:
            continue
        if (
            key not in keys
            and clicked_ids
            and any(piece.rstrip().lower().endswith("_" + i.lower()) for i in clicked_ids)
        ):
            key = normalise_title(piece, clicked_ids)
        (explicit if key in keys else latent).append(piece)
    return explicit, latent


# --------------------------------------------------------------------------- vectorised means


def group_means(
    vectors: np.ndarray | torch.Tensor, owners: np.ndarray, rows: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``vectors[rows[j]]`` over each owner ``owners[j]`` in ``0..n-1``: ``([n, d], counts [n])``.

    One sparse ``[n, V] @ [V, d]`` product; owners without rows get zeros.
    """
    table = torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32))
    owners = np.asarray(owners, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    counts = np.bincount(owners, minlength=n).astype(np.int64)
    if len(owners) == 0:
        return np.zeros((n, table.shape[1]), dtype=np.float32), counts
    weights = 1.0 / counts[owners].astype(np.float32)
    matrix = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([owners, rows])),
        torch.from_numpy(weights),
        (n, table.shape[0]),
        check_invariants=True,
    ).coalesce()
    return torch.sparse.mm(matrix, table).numpy(), counts


def titles_intents(
    values: np.ndarray,
    offsets: np.ndarray,
    candidates: np.ndarray,
    catalogue: np.ndarray,
    *,
    latent_top: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The ``titles`` source for N examples: ``(explicit [N, d], latent [N, d], counts)``.

    ``values``/``offsets``: the prefixes (CSR of item indices); ``candidates``: ``[N, K]`` item indices
    best first; ``catalogue``: ``[num_items, d]`` title vectors (row c = item index c+1).
    """
    n, k = candidates.shape
    lengths = np.diff(offsets)
    # membership of each candidate in its own prefix, via one sorted array of (row, item) keys
    stride = int(catalogue.shape[0]) + 1
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    prefix_keys = np.unique(owner * stride + values.astype(np.int64))
    cand_keys = np.arange(n, dtype=np.int64)[:, None] * stride + candidates.astype(np.int64)
    clicked = np.isin(cand_keys, prefix_keys)
    unclicked_rank = np.cumsum(~clicked, axis=1)
    latent_mask = ~clicked & (unclicked_rank <= latent_top)
    explicit_n = clicked.sum(1)
    latent_n = latent_mask.sum(1)
    # empty group copies the other
    explicit_mask = np.where((explicit_n == 0)[:, None], latent_mask, clicked)
    latent_mask = np.where((latent_n == 0)[:, None], clicked, latent_mask)
    out = []
    for mask in (explicit_mask, latent_mask):
        r, c = np.nonzero(mask)
        means, _ = group_means(catalogue, r, candidates[r, c].astype(np.int64) - 1, n)
        out.append(means)
    stats = {
        "examples": int(n),
        "explicit_from_clicks": int((explicit_n > 0).sum()),
        "explicit_copied_from_latent": int((explicit_n == 0).sum()),
        "latent_copied_from_explicit": int((latent_n == 0).sum()),
        "mean_explicit_items": round(float(explicit_mask.sum(1).mean()) if n else 0.0, 4),
        "mean_latent_items": round(float(latent_mask.sum(1).mean()) if n else 0.0, 4),
    }
    return out[0], out[1], stats


# --------------------------------------------------------------------------- feature tables


def titles_tables(
    dataset_dir: str | Path,
    encoder: TextEncoder,
    candidates_file: str | Path,
    *,
    top: int = 50,
    latent_top: int = 5,
    info: dict[str, Any] | None = None,
) -> dict[str, FeatureTable]:
    """FeatureTables ``explicit``/``latent`` of every example from a candidate file and title vectors."""
    from intentrec.data.candidates import read_candidates
    from intentrec.semantic.intents import embed_catalogue

    dataset = PreparedDataset(dataset_dir)
    ids, values, offsets = all_examples(dataset)
    candidates = read_candidates(candidates_file, ids, top=top)
    bad = (candidates < 1) | (candidates > dataset.num_items)
    if bad.any():
        raise DataError(
            f"field 'candidates': item index {int(candidates[bad][0])} is not in 1..{dataset.num_items}",
            path=candidates_file,
        )
    catalogue = embed_catalogue(dataset_dir, encoder, normalize=True).vectors
    explicit, latent, stats = titles_intents(values, offsets, candidates, catalogue, latent_top=latent_top)
    meta = {
        "source": "titles",
        "rule": f"explicit = clicked items among the top {top} candidates; latent = the {latent_top} best "
        "candidates not clicked; a group's vector is the mean of its items' unit title vectors; an empty "
        "group copies the other",
        "encoder_key": encoder.identity_key(),
        "candidates_file": str(candidates_file),
        "top": top,
        "latent_top": latent_top,
        "stats": stats,
        **(info or {}),
    }
    present = np.ones(len(ids), bool)
    return {
        "explicit": FeatureTable(ids, explicit, present, info={**meta, "name": "explicit"}),
        "latent": FeatureTable(ids, latent, present, info={**meta, "name": "latent"}),
    }


def piece_matches(
    pieces: Sequence[str], titles: Sequence[str | None], item_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Which items each piece may name, as CSR ``(offsets [P+1], item indices)``.

    A piece names item ``i`` when its normalised text is one of :func:`title_keys` of ``i``'s title,
    also after removing a ``_<id>`` suffix that is some item's id. Loops over the catalogue once and
    over the distinct pieces once.
    """
    by_key: dict[str, list[int]] = {}
    for index, (title, item_id) in enumerate(zip(titles, item_ids), start=1):
        for key in title_keys(title, item_id):
            by_key.setdefault(key, []).append(index)
    known_ids = {str(i).casefold() for i in item_ids if i}
    lengths = np.zeros(len(pieces), dtype=np.int64)
    found: list[int] = []
    for p, piece in enumerate(pieces):
        keys = {normalise_title(piece)}
        head, sep, tail = piece.rstrip().rpartition("_")
        if sep and tail.casefold() in known_ids:
            keys.add(normalise_title(head))
        items = sorted({i for key in keys if key for i in by_key.get(key, ())})
        lengths[p] = len(items)
        found.extend(items)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), np.asarray(found, dtype=np.int64)


def llm_tables(
    dataset_dir: str | Path,
    encoder: TextEncoder,
    *,
    llm_identity: dict[str, str],
    store_path: str | Path | None = None,
    batch_size: int = 64,
    info: dict[str, Any] | None = None,
) -> dict[str, FeatureTable]:
    """FeatureTables ``explicit``/``latent`` from the ``dmsrec`` answers in the answer store.

    Examples whose answer is missing, from another template version, or unparseable are absent
    (``present = False``); the coverage counts go into the tables' info. Answers are parsed once per
    distinct answer and pieces encoded once per distinct piece; the explicit test (does a piece name
    an item of the example's prefix?) and the averaging are vectorised over (example, piece) pairs.
    """
    from intentrec.semantic.embedding_cache import encode_cached
    from intentrec.semantic.prompts import get_template
    from intentrec.semantic.store import AnswerStore, dataset_fingerprint

    dataset = PreparedDataset(dataset_dir)
    ids, values, offsets = all_examples(dataset)
    n = len(ids)
    template = get_template(TEMPLATE)
    fingerprint = dataset_fingerprint(dataset_dir)
    with AnswerStore(store_path) as store:
        links = store.linked_keys(fingerprint, TEMPLATE, llm_identity["model_sha256"], ids.tolist())
        linked_ids = np.fromiter(links.keys(), dtype=np.int64, count=len(links))
        uniq, linked_keys = np.unique(np.asarray(list(links.values()), dtype=object), return_inverse=True)
        distinct_keys = [str(k) for k in uniq]
        records = store.get_many(distinct_keys)
        where = str(store.path)

    # per distinct answer key: status (0 missing, 1 stale, 2 unusable, 3 ok) and its pieces
    pieces: dict[str, int] = {}  # distinct piece -> index
    parsed: dict[str, list[int]] = {}  # answer text -> piece indices
    status = np.zeros(len(distinct_keys), dtype=np.int64)
    key_pieces: list[list[int]] = []
    for k, key in enumerate(distinct_keys):
        record = records.get(key)
        chosen: list[int] = []
        if record is None:
            status[k] = 0
        elif record.template_version != template.version:
            status[k] = 1
        else:
            chosen = parsed.get(record.answer)  # type: ignore[assignment]
            if chosen is None:
                answer = template.parse(record.answer)
                texts = answer.texts if answer.status == "ok" else []
                chosen = parsed[record.answer] = [
                    pieces.setdefault(t, len(pieces)) for t in texts if normalise_title(t)
                ]
            status[k] = 3 if chosen else 2
        key_pieces.append(chosen)

    # per example: its answer key (−1: not linked)
    example_key = np.full(n, -1, dtype=np.int64)
    if links:
        order = np.argsort(ids, kind="stable")
        rows_of_links = order[np.searchsorted(ids[order], linked_ids)]
        example_key[rows_of_links] = np.asarray(linked_keys, dtype=np.int64).reshape(-1)
    example_status = np.where(example_key >= 0, status[np.maximum(example_key, 0)], 0)

    # (example, piece) pairs of the usable answers
    piece_counts = np.asarray([len(p) for p in key_pieces], dtype=np.int64)
    piece_offsets = np.concatenate([[0], np.cumsum(piece_counts)]).astype(np.int64)
    piece_values = np.asarray([i for p in key_pieces for i in p], dtype=np.int64)
    ok_rows = np.flatnonzero(example_status == 3)
    per_row = piece_counts[example_key[ok_rows]]
    pair_row = np.repeat(ok_rows, per_row)
    within = np.arange(int(per_row.sum())) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    pair_piece = piece_values[np.repeat(piece_offsets[example_key[ok_rows]], per_row) + within]

    # explicit: the piece names an item of the example's prefix
    distinct = list(pieces)
    match_offsets, match_items = piece_matches(distinct, dataset.titles(), dataset.item_ids())
    stride = dataset.num_items + 1
    prefix_keys = np.unique(np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets)) * stride + values)
    match_counts = np.diff(match_offsets)[pair_piece] if len(distinct) else np.zeros(0, np.int64)
    pair_of_match = np.repeat(np.arange(len(pair_row)), match_counts)
    match_pos = np.arange(int(match_counts.sum())) - np.repeat(np.cumsum(match_counts) - match_counts, match_counts)
    items = match_items[np.repeat(match_offsets[pair_piece] if len(distinct) else pair_piece, match_counts) + match_pos]
    hit = np.isin(pair_row[pair_of_match] * stride + items, prefix_keys)
    is_explicit = np.bincount(pair_of_match[hit], minlength=len(pair_row)) > 0
    explicit_n = np.bincount(pair_row[is_explicit], minlength=n)
    latent_n = np.bincount(pair_row[~is_explicit], minlength=n)
    # an empty group copies the other
    use_explicit = is_explicit | (explicit_n[pair_row] == 0)
    use_latent = ~is_explicit | (latent_n[pair_row] == 0)

    if distinct:
        encoded, _ = encode_cached(encoder, distinct, normalize=True, batch_size=batch_size)
    else:
        encoded = np.zeros((0, encoder.dim), dtype=np.float32)
    present = example_status == 3
    missing_ids = ids[example_status == 0][:20].tolist()
    coverage = {
        "examples": int(n),
        "with_intent": int(present.sum()),
        "missing": int((example_status == 0).sum()),
        "stale": int((example_status == 1).sum()),
        "unusable": int((example_status == 2).sum()),
        "explicit_from_clicks": int((present & (explicit_n > 0)).sum()),
        "explicit_copied_from_latent": int((present & (explicit_n == 0)).sum()),
        "latent_copied_from_explicit": int((present & (latent_n == 0)).sum()),
        "fraction": round(float(present.sum()) / n, 6) if n else 0.0,
    }
    meta = {
        "source": "llm",
        "template": TEMPLATE,
        "template_version": template.version,
        "llm": llm_identity,
        "store": where,
        "encoder_key": encoder.identity_key(),
        "distinct_pieces": len(distinct),
        "coverage": coverage,
        "missing_example_ids": missing_ids,
        **(info or {}),
    }
    tables = {}
    for group, selected in (("explicit", use_explicit), ("latent", use_latent)):
        means, _ = group_means(encoded, pair_row[selected], pair_piece[selected], n)
        tables[group] = FeatureTable(ids, means, present, info={**meta, "name": group})
    return tables
