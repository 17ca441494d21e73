"""LLM-DMsRec end to end with the ``llm`` intent source and a real small LLM (the shipped SmolLM2).

Real cross-fitted candidates -> real ``dmsrec`` answers from llama.cpp -> the method trained on the
covered examples only. Skips outside CI when the LLM stage is not installed; fails in CI.
"""

from __future__ import annotations

import pytest

from intentrec.errors import DataError

LIMITS = {"train": 4, "valid": 2, "test": 2}  # 8 prompts in all


def test_llm_source_with_a_real_small_llm(tmp_path):
    from tests.helpers.llm import require_smollm2
    from tests.helpers.semantic import LLM_TITLES, llm_sessions, write_dataset

    require_smollm2()
    pytest.importorskip("sentence_transformers")
    from intentrec.semantic.infer import load_candidates, run_inference
    from intentrec.semantic.llm import resolve_llm_identity
    from intentrec.semantic.llm.base import DecodingConfig
    from intentrec.semantic.store import AnswerStore
    from intentrec.training import train
    from intentrec.training.candidates import cross_fit_candidates

    sessions = {"train": llm_sessions(4, 4), "valid": llm_sessions(2, 3), "test": llm_sessions(2, 4)}
    data = write_dataset(tmp_path / "ds", sessions, LLM_TITLES)

    # real cross-fitted candidates (2 folds over the train sessions), tiny runs
    cands = cross_fit_candidates(
        data,
        model="gcegnn",
        folds=2,
        top=5,
        model_config={"embedding_dim": 8},
        trainer_config={"epochs": 1},
        work_dir=tmp_path / "cand",
        progress=False,
    )
    assert cands.provenance["leaky"] is False
    candidates = load_candidates(cands.path)
    assert len(candidates) == 12 + 4 + 6 and all(len(c) == 5 for c in candidates.values())

    # real answers of the dmsrec template for a few examples of each split
    store_path = tmp_path / "answers.sqlite"
    covered = {}
    with AnswerStore(store_path) as store:
        for split, limit in LIMITS.items():
            report = run_inference(
                data,
                template="dmsrec",
                llm="smollm2",
                split=split,
                limit=limit,
                candidates=candidates,
                store=store,
                decoding=DecodingConfig(max_tokens=24),
                llm_options={"n_parallel": 4},
                progress=False,
            )
            assert report.covered == limit and report.status_counts == {"ok": limit}, report
            covered[split] = report.covered

    config = {"source": "llm", "llm": "smollm2", "store": str(store_path), "candidates_file": str(cands.path)}
    # the uncovered examples are refused unless the run is restricted to the covered ones
    with pytest.raises(DataError, match="have no text features"):
        train(
            data,
            "srgnn",
            {"embedding_dim": 16},
            {"epochs": 1},
            out=tmp_path / "refused",
            method="dmsrec",
            method_config=config,
            progress=False,
        )
    result = train(
        data,
        "srgnn",
        {"embedding_dim": 16},
        {"epochs": 2},
        out=tmp_path / "run",
        method="dmsrec",
        method_config={**config, "restrict_to_covered": True},
        progress=False,
    )

    semantic = result.metrics["semantic"]
    assert semantic["source"] == "llm" and semantic["views"] == ["explicit", "latent"]
    assert semantic["examples_used"] == covered
    assert semantic["examples_total"] == {"train": 12, "valid": 4, "test": 6}
    sha = resolve_llm_identity("smollm2")["model_sha256"]
    for group in ("explicit", "latent"):
        info = semantic["features"][group]
        assert info["source"] == "llm" and info["template"] == "dmsrec"
        assert info["llm"]["model_sha256"] == sha and len(sha) == 64
        assert info["coverage"]["with_intent"] == sum(LIMITS.values())
    assert semantic["candidates"]["file"] == str(cands.path) and semantic["candidates"]["leaky"] is False
    assert result.epochs_run == 2
    assert result.test and all(0.0 <= v <= 1.0 for v in result.test.values())
