"""A tiny catalogue, its prepared dataset, a tiny BERT and stored answers for ``embed`` / ``intents`` tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from intentrec.data import schema
from intentrec.semantic.store import AnswerRecord, AnswerStore, answer_key, dataset_fingerprint

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "red",
    "nail",
    "polish",
    "blue",
    "garden",
    "hose",
    "a",
    "lipstick",
    "mascara",
    "shampoo",
]
TITLES = ["red nail polish", "blue nail polish", "garden hose", "red lipstick", None, "blue mascara", "shampoo"]
# Sessions of item indices (1..7); examples are every proper prefix.
SESSIONS = {"train": [[1, 2, 3], [4, 6, 7, 1]], "valid": [[2, 4]], "test": [[5, 1, 3]]}
LLM = {"backend": "llamacpp", "model": "fake.gguf", "model_sha256": "f" * 64}


def make_tiny_bert(folder: Path, seed: int = 1, vocab: list[str] | None = None) -> Path:
    """A randomly initialised one-layer BERT (hidden size 16) over ``vocab`` (default :data:`VOCAB`),
    saved in ``folder`` like a hub model; skips without transformers."""
    vocab = VOCAB if vocab is None else vocab
    transformers = pytest.importorskip("transformers")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def write_dataset(folder: Path) -> Path:
    """A prepared dataset in the layout of intentrec.data.schema, written by hand."""
    folder.mkdir(parents=True)
    n = len(TITLES)
    pq.write_table(
        pa.table(
            {
                "item_index": pa.array(range(1, n + 1), pa.int32()),
                "item_id": pa.array([f"P{i}" for i in range(1, n + 1)]),
                "title": pa.array(TITLES, pa.string()),
                "train_count": pa.array([1] * n, pa.int64()),
            }
        ),
        folder / schema.ITEMS,
    )
    sessions, examples = [], []
    for split in schema.SPLITS:
        for clicks in SESSIONS[split]:
            sessions.append((len(sessions), f"s{len(sessions)}", split, clicks))
            for cut in range(1, len(clicks)):
                examples.append((len(examples), split, sessions[-1][0], clicks[:cut], clicks[cut]))
    cols = list(zip(*sessions))
    pq.write_table(
        pa.table(
            {
                "session_index": pa.array(cols[0], pa.int64()),
                "session_id": pa.array(cols[1]),
                "split": pa.array(cols[2]),
                "items": pa.array(cols[3], pa.list_(pa.int32())),
            }
        ),
        folder / schema.SESSIONS,
    )
    cols = list(zip(*examples))
    pq.write_table(
        pa.table(
            {
                "example_id": pa.array(cols[0], pa.int64()),
                "split": pa.array(cols[1]),
                "session_index": pa.array(cols[2], pa.int64()),
                "prefix": pa.array(cols[3], pa.list_(pa.int32())),
                "target": pa.array(cols[4], pa.int32()),
            }
        ),
        folder / schema.EXAMPLES,
    )
    manifest = {"format_version": schema.FORMAT_VERSION, "statistics": {"items": n, "examples": len(examples)}}
    (folder / schema.MANIFEST).write_text(json.dumps(manifest))
    return folder


# example ids: train 0,1 (session 0), 2,3,4 (session 1); valid 5; test 6,7
ALL_IDS = list(range(8))


def put_answers(store: AnswerStore, dataset: Path, template: str, answers: dict[int, str], version: str = "1") -> None:
    fp = dataset_fingerprint(dataset)
    records, pairs = [], []
    for eid, text in answers.items():
        prompt = f"prompt for example {eid}"
        key = answer_key(LLM["backend"], LLM["model_sha256"], {"temperature": 0.0}, version, prompt)
        records.append(
            AnswerRecord(
                key,
                LLM["backend"],
                LLM["model"],
                LLM["model_sha256"],
                template,
                version,
                '{"temperature": 0.0}',
                prompt,
                text,
            )
        )
        pairs.append((eid, key))
    store.put_many(records)
    store.link_examples(fp, template, LLM["model_sha256"], pairs)
