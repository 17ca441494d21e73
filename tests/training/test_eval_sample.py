"""train.eval_sample: valid and test on the seeded sample that evaluate --sample N --seed S scores."""

import json

import pytest

from intentrec.errors import IntentrecError
from intentrec.training import evaluate_run, load_run, train
from intentrec.training.eval_sample import evaluated_examples, sample_examples
from tests.helpers.tinyrun import FAST_TRAINER, TEST_BACKBONE, write_tiny_dataset

SAMPLE = {**FAST_TRAINER, "epochs": 2, "eval_sample": 9, "eval_sample_seed": 4}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def sampled_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled") / "run"
    return train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 8}, SAMPLE, out=out, progress=False)


def test_valid_and_test_are_the_rows_of_evaluate_sample(tiny_dataset, sampled_run):
    metrics = sampled_run.metrics
    assert metrics["num_examples"]["valid"] == metrics["num_examples"]["test"] == 9
    full = load_run(sampled_run.run_dir).dataset.examples("test")
    assert metrics["eval_sample"] == {
        "sample": 9,
        "seed": 4,
        "examples": {"valid": 9, "test": 9},
        "examples_total": {"valid": len(load_run(sampled_run.run_dir).dataset.examples("valid")), "test": len(full)},
    }
    assert len(full) > 9
    assert metrics["selection"].endswith("; valid and test on a seeded sample of 9 examples (seed 4)")
    trained = load_run(sampled_run.run_dir)
    report = evaluate_run(trained, "test", sample=9, seed=4)
    assert report["metrics"] == pytest.approx(metrics["test"])
    assert report["sample"]["example_ids"] == evaluated_examples(trained, "test").example_ids.tolist()
    # another seed is another sample
    other = sample_examples(full, 9, 5).example_ids.tolist()
    assert other != report["sample"]["example_ids"]
    assert sample_examples(full, None, 0) is full


def test_default_run_has_no_sample(tiny_dataset, tmp_path):
    result = train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 8}, {**FAST_TRAINER, "epochs": 1}, out=tmp_path / "r")
    assert "eval_sample" not in result.metrics
    assert result.selection.endswith("evaluated once on TEST")
    assert len(evaluated_examples(load_run(result.run_dir), "test")) == result.metrics["num_examples"]["test"]


def test_paper_mode_with_a_sample_is_still_paper_mode(tiny_dataset, tmp_path):
    values = {**SAMPLE, "epochs": 1, "select_on": "test"}
    result = train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 8}, values, out=tmp_path / "p", progress=False)
    assert result.paper_mode
    assert "test on a seeded sample of 9 examples" in result.selection


def test_the_sample_cannot_change_on_resume(tiny_dataset, sampled_run):
    config = json.loads((sampled_run.run_dir / "config.json").read_text())
    assert config["trainer"]["eval_sample"] == 9
    with pytest.raises(IntentrecError, match=r"train.eval_sample: 9 → 10"):
        train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 8}, {**SAMPLE, "eval_sample": 10}, out=sampled_run.run_dir)
