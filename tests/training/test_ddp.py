"""DDP training (training/distributed.py): two CPU processes with gloo on the tiny dataset.

The ranks train GRU4Rec (no dropout, so no random draw differs between one process and two) and must
match one process with the same global batch: the same batches, the gradient of the whole batch at
every step. Not bit for bit: each rank's loss is a mean over its half, the halves' gradients are summed
by the all-reduce, so float additions happen in another order (about 1e-7 relative); weights and
losses are compared with a tolerance, metrics (from integer ranks) match unless a score tie flips.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from intentrec.cli.main import app
from intentrec.errors import ConfigError
from intentrec.training import train
from intentrec.training.distributed import Distributed, check_world, join, launch, local_world_size
from tests.helpers import child_env
from tests.helpers.tinyrun import write_tiny_dataset

MODEL = {"embedding_dim": 16}
TRAINER = {"epochs": 2, "seed": 7, "num_threads": 1, "patience": None, "batch_size": 16, "lr": 0.01}
CLI_SETTINGS = [
    *("--set", "model.embedding_dim=16", "--set", "epochs=2", "--set", "seed=7", "--set", "num_threads=1"),
    *("--set", "patience=null", "--set", "batch_size=16", "--set", "lr=0.01", "--no-progress"),
]
TIMING = {"seconds", "train_seconds", "peak_rss_mb"}

# Each rank trains run "ddp", then run "killed", in which rank 0 kills itself halfway through epoch 2.
# Every write of the run folder is counted per rank.
RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys

    from intentrec.models.registry import backbone_class
    from intentrec.training import train, trainer

    args = json.loads(sys.argv[1])
    rank = int(os.environ["RANK"])

    def counted(name):
        original = getattr(trainer, name)

        def write(path, *rest, **kwargs):
            with open(os.path.join(args["writes"], f"rank{rank}.txt"), "a") as fh:
                target = getattr(path, "config", path)  # write_record takes the RunDir
                fh.write(f"{name} {os.path.basename(str(target))}\\n")
            return original(path, *rest, **kwargs)

        setattr(trainer, name, write)

    for name in ("save_weights", "save_training_state", "append_jsonl", "write_json", "write_record"):
        counted(name)

    train(args["data"], "gru4rec", args["model"], args["trainer"], out=args["ddp"], progress=False)

    gru4rec = backbone_class("gru4rec")
    original_loss = gru4rec.loss
    calls = 0

    def loss(self, batch):
        global calls
        calls += 1
        if rank == 0 and calls == args["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return original_loss(self, batch)

    gru4rec.loss = loss
    train(args["data"], "gru4rec", args["model"], args["trainer"], out=args["killed"], progress=False)
    """
)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """One process, then one launch of two ranks: the "ddp" run and the "killed" one."""
    from intentrec.data.dataset import PreparedDataset

    root = tmp_path_factory.mktemp("ddp")
    single = root / "single"
    train(tiny_dataset, "gru4rec", MODEL, TRAINER, out=single, progress=False)
    steps = PreparedDataset(tiny_dataset).examples("train").num_batches(TRAINER["batch_size"])
    writes = root / "writes"
    writes.mkdir()
    args = {
        "data": str(tiny_dataset),
        "model": MODEL,
        "trainer": TRAINER,
        "ddp": str(root / "ddp"),
        "killed": str(root / "killed"),
        "writes": str(writes),
        "kill_at": steps + steps // 2,
    }
    code = launch([sys.executable, "-c", RANK_SCRIPT, json.dumps(args)], 2, env=child_env(OMP_NUM_THREADS="1"))
    return {"single": single, "ddp": root / "ddp", "killed": root / "killed", "writes": writes, "code": code}


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_two_processes_equal_one_process_with_the_same_global_batch(runs):
    single, ddp = runs["single"], runs["ddp"]
    for a, b in zip(_log(single), _log(ddp), strict=True):
        assert a["epoch"] == b["epoch"] and a["lr"] == b["lr"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["valid"] == pytest.approx(a["valid"], abs=1e-5)
    ms, md = _metrics(single), _metrics(ddp)
    assert md["test"] == pytest.approx(ms["test"], abs=1e-5)
    assert md["valid"] == pytest.approx(ms["valid"], abs=1e-5)
    assert md["best_epoch"] == ms["best_epoch"] and md["num_examples"] == ms["num_examples"]
    assert ms["test"]["MRR@20"] > 0.2  # it learned something, so the comparison means something
    wa, wb = load_file(single / "best.safetensors"), load_file(ddp / "best.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5)
    assert json.loads((ddp / "config.json").read_text())["distributed"] == {"world_size": 2, "backend": "gloo"}


def test_rank_zero_alone_writes_the_run_folder(runs):
    assert not (runs["writes"] / "rank1.txt").exists()
    lines = (runs["writes"] / "rank0.txt").read_text().splitlines()
    ddp = lines[: lines.index("write_json metrics.json") + 1]
    assert ddp.count("write_record config.json") == 1
    assert ddp.count("save_training_state last.safetensors") == 2
    assert ddp.count("append_jsonl log.jsonl") == 2
    assert ddp.count("save_weights best.safetensors") == sum(r["improved"] for r in _log(runs["ddp"]))
    assert [r["epoch"] for r in _log(runs["ddp"])] == [1, 2]
    assert not list(runs["ddp"].glob(".*.tmp"))


def test_kill_9_of_rank_zero_then_resume_with_the_cli_equals_the_uninterrupted_run(runs, tiny_dataset):
    killed = runs["killed"]
    assert runs["code"] == -signal.SIGKILL  # rank 0's status; rank 1 was stopped by the launcher
    assert [r["epoch"] for r in _log(killed)] == [1]
    assert not (killed / "metrics.json").exists()

    command = [sys.executable, "-m", "intentrec.cli.main", "train", str(tiny_dataset), "--model", "gru4rec"]
    command += ["--out", str(killed), "--ddp", "--nproc", "2", *CLI_SETTINGS]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("epoch   2") == 1  # rank 0 alone prints: the resumed epoch and the table
    assert proc.stdout.count("gru4rec →") == 1 and "epoch   1" not in proc.stdout

    ddp = runs["ddp"]
    for name in ("best.safetensors", "last.safetensors"):
        ta, tb = load_file(ddp / name), load_file(killed / name)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), (name, key)
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in _log(ddp)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in _log(killed)]
    assert _metrics(killed)["test"] == _metrics(ddp)["test"]


def _rank(rank: int, world: int) -> Distributed:
    return Distributed(rank, world, rank, "gloo", torch.device("cpu"))


def test_ranks_shard_the_global_batches_of_one_process(tiny_dataset):
    from intentrec.data.dataset import PreparedDataset

    examples = PreparedDataset(tiny_dataset).examples("train").subset(np.arange(19))  # batches of 9, 9 and 1
    ranks = [_rank(r, 3) for r in range(3)]
    shards = [list(d.batches(examples, 9, seed=3, max_length=None)) for d in ranks]
    expected = list(examples.batches(9, shuffle=True, seed=3))
    for step, batch in enumerate(expected):
        parts = [shards[r][step] for r in range(3)]
        if step < 2:
            assert [p.size for p in parts] == [3, 3, 3]
            assert torch.equal(torch.cat([p.example_ids for p in parts]), batch.example_ids)
    # the last batch has one example: rank 0 trains it, the others step with weight 0 on a copy of it
    last = [shards[r][2] for r in range(3)]
    assert all(torch.equal(p.example_ids, expected[2].example_ids) for p in last)
    assert [d._shard for d in ranks] == [(1, 1), (0, 1), (0, 1)]


def test_settings_that_cannot_run_distributed_say_so(tiny_dataset, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node N"):
        join("cpu")
    with pytest.raises(ConfigError, match="--ddp --nproc N"):
        train(tiny_dataset, "gru4rec", MODEL, TRAINER, out=tmp_path / "run", ddp=True)
    assert not (tmp_path / "run" / "config.json").exists()
    with pytest.raises(ConfigError, match="batch_size 15 is the global batch and must be divisible by the 2"):
        check_world(15, 2)
    with pytest.raises(ConfigError, match="nothing to train"):
        _rank(0, 2).check_model(torch.nn.Linear(1, 1), trains=False)
    with pytest.raises(ConfigError, match="not on device 'mps'"):
        local_world_size(2, "mps")


def test_cli_checks_ddp_options_before_starting_processes(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    runner = CliRunner()
    base = ["train", str(tiny_dataset), "--model", "gru4rec", "--out", str(tmp_path / "run")]
    cases = [
        (["--nproc", "2"], "--nproc goes with --ddp"),
        (["--ddp"], "--ddp on CPU needs the number of processes: --nproc N"),
        (["--ddp", "--nproc", "3", "--set", "batch_size=16"], "must be divisible by the 3 processes"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert isinstance(result.exception, ConfigError) and message in str(result.exception), result.output
    assert not (tmp_path / "run").exists()


def test_launcher_stops_every_rank_when_one_fails(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, sys, time
        rank = int(os.environ["RANK"])
        open(os.path.join({str(tmp_path)!r}, f"pid{{rank}}"), "w").write(str(os.getpid()))
        if rank == 1:
            while not os.path.exists(os.path.join({str(tmp_path)!r}, "pid0")):
                time.sleep(0.01)
            sys.exit(3)
        time.sleep(600)
        """
    )
    assert launch([sys.executable, "-c", script], 2, env=child_env(), grace_seconds=2) == 3
    pid = int((tmp_path / "pid0").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
