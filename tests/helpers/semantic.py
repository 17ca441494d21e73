"""Hand-written prepared datasets with beauty-product titles, for the semantic (LLM) stage's tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TITLES = [
    "Rosewater Facial Toner 8 oz",
    "Matte Liquid Lipstick, Ruby Red",
    "Volumizing Mascara Black",
    "Argan Oil Shampoo for Dry Hair",
    "Argan Oil Conditioner",
    "Gel Nail Polish Set, 6 Colors",
    None,  # an item without a title
    "Vitamin C Serum with Hyaluronic Acid",
]


def write_dataset(folder: Path, sessions: dict[str, list[list[int]]], titles=TITLES) -> Path:
    """A prepared dataset in the layout of ``intentrec.data.schema``; prefix examples per session."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(titles)
    pq.write_table(
        pa.table(
            {
                "item_index": pa.array(range(1, n + 1), pa.int32()),
                "item_id": [f"B0000{i:05d}" for i in range(1, n + 1)],
                "title": pa.array(titles, pa.string()),
                "train_count": pa.array([1] * n, pa.int64()),
            }
        ),
        folder / "items.parquet",
    )
    srows, erows = [], []
    for split, seqs in sessions.items():
        for seq in seqs:
            sidx = len(srows)
            srows.append((sidx, f"s{sidx}", split, seq))
            for t in range(1, len(seq)):
                erows.append((len(erows), split, sidx, seq[:t], seq[t]))
    pq.write_table(
        pa.table(
            {
                "session_index": pa.array([r[0] for r in srows], pa.int64()),
                "session_id": [r[1] for r in srows],
                "split": [r[2] for r in srows],
                "items": pa.array([r[3] for r in srows], pa.list_(pa.int32())),
            }
        ),
        folder / "sessions.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "example_id": pa.array([r[0] for r in erows], pa.int64()),
                "split": [r[1] for r in erows],
                "session_index": pa.array([r[2] for r in erows], pa.int64()),
                "prefix": pa.array([r[3] for r in erows], pa.list_(pa.int32())),
                "target": pa.array([r[4] for r in erows], pa.int32()),
            }
        ),
        folder / "examples.parquet",
    )
    manifest = {"format_version": 1, "protocol": "test", "statistics": {"items": n, "test_examples": len(erows)}}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


# Two test sessions share their first two items, and one repeats another whole session, so
# several prefixes are identical prompts.
SESSIONS = {
    "train": [[1, 2, 3, 4], [5, 6, 7]],
    "valid": [[2, 3]],
    "test": [[1, 2, 3, 8], [1, 2, 5], [4, 5, 6, 7, 8], [1, 2, 3, 8]],
}

# A larger catalogue for tests with a real LLM.
LLM_TITLES = [
    "Rosewater Facial Toner 8 oz",
    "Matte Liquid Lipstick, Ruby Red",
    "Volumizing Mascara Black",
    "Argan Oil Shampoo for Dry Hair",
    "Argan Oil Conditioner",
    "Gel Nail Polish Set, 6 Colors",
    "Vitamin C Serum",
    "Coconut Body Lotion",
    "Tea Tree Face Wash",
    "Charcoal Peel-Off Mask",
    "Bamboo Makeup Brush Set",
    "SPF 50 Sunscreen Spray",
    "Lavender Bath Bombs",
    "Keratin Hair Mask",
]


def llm_sessions(n_sessions: int, length: int) -> list[list[int]]:
    """Sessions over :data:`LLM_TITLES`, deterministic, each of ``length`` clicks."""
    n = len(LLM_TITLES)
    return [[(s * 3 + k * (s + 1)) % n + 1 for k in range(length)] for s in range(n_sessions)]
