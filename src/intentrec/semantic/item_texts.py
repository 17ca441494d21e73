"""Item texts for item-level encoders, rendered by versioned templates.

``title/1``
    the title, or ``item <item_id>`` when the item has none (what every catalogue embedding used so far);
``fields/1``
    every text field the dataset's items table has, in a fixed order, as ``Field: value`` lines joined
    by ``"; "`` (title, brand, category, price, colour, size, material, author, description); empty
    fields are left out; an item with none of them falls back to ``item <item_id>``.

A template's text changes only with a new version, so a cached embedding (keyed by encoder identity,
template and the texts' sha256) stays valid exactly as long as the texts it encoded.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from intentrec.data.dataset import PreparedDataset
from intentrec.errors import ConfigError

DEFAULT_TEMPLATE = "title/1"
#: item columns that ``fields/1`` renders, in this order, with their labels
FIELDS = (
    ("title", "Title"),
    ("brand", "Brand"),
    ("category", "Category"),
    ("categories", "Category"),
    ("price", "Price"),
    ("color", "Colour"),
    ("colour", "Colour"),
    ("size", "Size"),
    ("material", "Material"),
    ("author", "Author"),
    ("description", "Description"),
    ("desc", "Description"),
)


def _present(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _title(items: pd.DataFrame) -> list[str | None]:
    if "title" not in items:
        return [None] * len(items)
    return [t if isinstance(t, str) and t.strip() else None for t in items["title"]]  # kept as written


def _fields(items: pd.DataFrame) -> list[str | None]:
    columns = [(c, label) for c, label in FIELDS if c in items.columns]
    rows = []
    for values in zip(*(items[c].tolist() for c, _ in columns)) if columns else [()] * len(items):
        parts = [f"{label}: {text}" for (_, label), v in zip(columns, values) if (text := _present(v))]
        rows.append("; ".join(parts) or None)
    return rows


TEMPLATES: dict[str, Callable[[pd.DataFrame], list[str | None]]] = {"title/1": _title, "fields/1": _fields}


def item_texts(dataset: PreparedDataset, template: str = DEFAULT_TEMPLATE) -> tuple[list[str], int]:
    """The text of each item by column under ``template``, and how many items had no text."""
    if template not in TEMPLATES:
        raise ConfigError(f"unknown item text template '{template}' (known: {', '.join(TEMPLATES)})")
    items = dataset.items.reset_index()  # one row per item index, in order
    rendered = TEMPLATES[template](items)
    ids = items["item_id"].astype(str).tolist()
    texts = [t if t else f"item {i}" for t, i in zip(rendered, ids)]
    return texts, sum(1 for t in rendered if not t)
