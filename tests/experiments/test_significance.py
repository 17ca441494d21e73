"""Per-example test ranks in records and the paired tests behind the reports' p column."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from intentrec.errors import IntentrecError
from intentrec.experiments.report import Report, render_csv, render_markdown
from intentrec.experiments.significance import (
    RANKS_KEY,
    decode_ranks,
    encode_ranks,
    format_p,
    paired_test,
    paired_values,
)
from tests.experiments.test_experiments import _spec

KS = [5, 10, 20]


def _record(run_id: str, seed: int, ids, ranks, *, method=None, variant="default") -> dict:
    ranks = np.asarray(ranks)
    hit = ranks <= 20
    return {
        "run_id": run_id,
        "seed": seed,
        "backbone": "srgnn",
        "method": method,
        "variant": variant,
        "paper_mode": False,
        "epochs_run": 3,
        "best_epoch": 2,
        "dataset": {"name": "d", "path": "data", "manifest_sha256": "0" * 64},
        "test": {"HR@20": float(hit.mean()), "MRR@20": float(np.where(hit, 1 / ranks, 0).mean())},
        RANKS_KEY: encode_ranks(np.asarray(ids), ranks, KS),
    }


def test_ranks_round_trip_sorted_by_example_and_capped():
    ids = np.array([7, 2, 40_000, 3])
    ranks = np.array([1, 500, 21, 12_000])
    entry = encode_ranks(ids, ranks, KS)
    back = decode_ranks(entry)
    assert back.cap == 21
    assert back.example_ids.tolist() == [2, 3, 7, 40_000]
    assert back.ranks.tolist() == [21, 21, 1, 21]


def test_ranks_compress_to_a_few_bytes_per_example():
    rng = np.random.default_rng(0)
    n = 20_000
    ranks = np.where(rng.random(n) < 0.3, rng.integers(1, 501, n), 10_000)
    entry = encode_ranks(np.arange(n), ranks, [5, 20, 100, 500])
    assert len(entry["example_ids"]) < 200  # consecutive ids: almost nothing
    assert len(entry["ranks"]) < 2.2 * n  # base64 of < 1.6 bytes an example


def test_damaged_rank_data_is_one_clear_error():
    entry = encode_ranks(np.arange(10), np.arange(1, 11), KS)
    with pytest.raises(IntentrecError, match="holds 10 values, the record says 11"):
        decode_ranks({**entry, "count": 11}, "beauty/x/s0")
    with pytest.raises(IntentrecError, match="not valid compressed data"):
        decode_ranks({**entry, "ranks": "not base64!"}, "beauty/x/s0")
    with pytest.raises(IntentrecError, match="unknown format"):
        decode_ranks({**entry, "format": 99})


def test_mcnemar_and_wilcoxon_on_a_hand_built_pair():
    # 10 examples the method hits and the baseline misses, none the other way: p = 2 · 0.5^10
    base = _record("b/s0", 0, range(30), [100] * 10 + [3] * 20)
    meth = _record("m/s0", 0, range(30), [2] * 10 + [3] * 20, method="semsr")
    test = paired_test([meth], [base], 20)
    assert test.pairs == 30
    assert test.p_hr == pytest.approx(2 * 0.5**10)
    assert test.p_mrr == pytest.approx(wilcoxon(np.full(10, 0.5), zero_method="wilcox").pvalue)
    same = paired_test([base], [base], 20)
    assert (same.p_hr, same.p_mrr) == (1.0, 1.0)


def test_seeds_are_paired_by_seed_and_examples_by_id():
    base = [_record("b/s0", 0, [0, 1, 2, 3], [1, 2, 3, 4]), _record("b/s1", 1, [0, 1, 2, 3], [5, 6, 7, 8])]
    meth = [
        _record("m/s0", 0, [1, 2, 3, 9], [1, 1, 1, 1], method="x"),  # example 9 has no partner
        _record("m/s2", 2, [0, 1], [1, 1], method="x"),  # seed 2 has no baseline
    ]
    hit_a, hit_b, rr_a, rr_b = paired_values(meth, base, 20)
    assert hit_a.size == 3
    assert rr_b.tolist() == [1 / 2, 1 / 3, 1 / 4] and rr_a.tolist() == [1.0, 1.0, 1.0]
    assert paired_values(meth, base, 21) is None  # the cap hides ranks above max(ks)
    assert paired_values([{k: v for k, v in meth[0].items() if k != RANKS_KEY}], base, 20) is None


def test_report_shows_p_values_only_when_records_keep_ranks():
    spec = _spec(grids=[{"backbones": ["srgnn"], "methods": ["none", "semsr"]}], seeds=[0])
    rng = np.random.default_rng(1)
    ids = np.arange(400)
    base = _record("d/srgnn/default/s0", 0, ids, rng.integers(1, 60, 400))
    meth = _record("d/srgnn+semsr/default/s0", 0, ids, rng.integers(1, 30, 400), method="semsr")
    from intentrec.experiments.plan import expand

    runs = expand(spec)
    report = Report(spec, "tiny.yaml", runs, {base["run_id"]: base, meth["run_id"]: meth})
    md = render_markdown(report)
    expected = paired_test([meth], [base], 20)
    assert "p HR@20 / MRR@20" in md and "McNemar" in md
    assert f"| {format_p(expected.p_hr)} / {format_p(expected.p_mrr)} |" in md
    csv_text = render_csv(report)
    assert "p_HR@20,p_MRR@20,paired_examples" in csv_text.splitlines()[0]
    assert csv_text.splitlines()[2].endswith(f"{expected.p_hr:.3g},{expected.p_mrr:.3g},400")

    plain = {k: {f: v for f, v in r.items() if f != RANKS_KEY} for k, r in report.records.items()}
    md_plain = render_markdown(Report(spec, "tiny.yaml", runs, plain))
    assert "p HR@20" not in md_plain and "McNemar" not in md_plain
    assert "paired_examples" not in render_csv(Report(spec, "tiny.yaml", runs, plain))


def test_format_p():
    assert format_p(0.0004) == "<0.001" and format_p(0.0123) == "0.012" and not math.isnan(float(format_p(1.0)))


def test_comparisons_test_two_rows_of_one_backbone_against_each_other():
    spec = _spec(
        grids=[
            {"backbones": ["srgnn"], "methods": ["none"]},
            {"backbones": ["srgnn"], "methods": ["llm4sbr"], "variants": {"default": {}, "shuffled": {}}},
        ],
        seeds=[0, 1],
        comparisons=[
            {"a": {"method": "llm4sbr"}, "b": {"method": "llm4sbr", "variant": "shuffled"}},
            {"a": {"method": "llm4sbr"}, "b": {}, "label": "titles vs alone", "backbones": ["srgnn"]},
        ],
    )
    from intentrec.experiments.plan import expand

    rng = np.random.default_rng(2)
    ids = np.arange(300)
    records = {}
    for seed in (0, 1):
        for method, variant, high in ((None, "default", 80), ("llm4sbr", "default", 25), ("llm4sbr", "shuffled", 40)):
            name = "srgnn" if method is None else "srgnn+llm4sbr"
            run_id = f"d/{name}/{variant}/s{seed}"
            records[run_id] = _record(run_id, seed, ids, rng.integers(1, high, 300), method=method, variant=variant)
    report = Report(spec, "tiny.yaml", expand(spec), records)
    md = render_markdown(report)
    assert "## Paired comparisons" in md
    titles = [records[f"d/srgnn+llm4sbr/default/s{s}"] for s in (0, 1)]
    shuffled = [records[f"d/srgnn+llm4sbr/shuffled/s{s}"] for s in (0, 1)]
    expected = paired_test(titles, shuffled, 20)
    assert expected.pairs == 600
    delta_hr = 100 * (np.mean([r["test"]["HR@20"] for r in titles]) - np.mean([r["test"]["HR@20"] for r in shuffled]))
    line = next(x for x in md.splitlines() if "llm4sbr/default − llm4sbr/shuffled" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "srgnn" and cells[2] == "2 / 2"
    assert cells[5].split(" / ")[0] == f"{delta_hr:+.2f}"
    assert cells[6] == f"{format_p(expected.p_hr)} / {format_p(expected.p_mrr)}" and cells[7] == "600"
    assert any(x.startswith("| srgnn | titles vs alone |") for x in md.splitlines())

    no_pairs = _spec(grids=spec.model_dump()["grids"], seeds=[0, 1])
    assert "Paired comparisons" not in render_markdown(Report(no_pairs, "tiny.yaml", expand(no_pairs), records))


@pytest.mark.parametrize(
    ("comparison", "message"),
    [
        (
            {"a": {"method": "llm4sbr", "variant": "nope"}, "b": {}},
            r"comparisons\[0\]\.a: no grid block has method 'llm4sbr' with variant 'nope'",
        ),
        ({"a": {"method": "llm4sbr"}, "b": {"method": "llm4sbr"}}, "a and b are the same row"),
        ({"a": {"method": "llm4sbr"}, "b": {}, "backbones": ["gru4rec"]}, "names 'gru4rec'"),
        ({"a": {"method": "llm4sbr", "varaint": "x"}, "b": {}}, "unknown key 'comparisons.0.a.varaint'"),
    ],
)
def test_comparisons_naming_rows_the_grid_lacks_are_one_clear_error(comparison, message):
    from intentrec.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _spec(comparisons=[comparison])
