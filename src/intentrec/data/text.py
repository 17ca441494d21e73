"""Cleaning of item titles and other item text."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd


def clean_text(values: pd.Series) -> pd.Series:
    """Unescape HTML entities (``html.unescape``), collapse whitespace; empty → None.

    Works on an object/string Series; missing values stay None.
    """
    text = values.astype(object)
    present = np.array([isinstance(v, str) for v in text], dtype=bool)
    out = np.full(len(text), None, dtype=object)
    if present.any():
        cleaned = text[present].map(html.unescape).str.replace(r"\s+", " ", regex=True).str.strip()
        out[present] = [v if isinstance(v, str) and v else None for v in cleaned]
    return pd.Series(out, index=values.index, dtype=object)
