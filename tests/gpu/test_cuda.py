"""The same models on a CUDA device: outputs, losses and gradients agree with the CPU, training runs.

Skipped where torch sees no CUDA device (CI has none). Run on a GPU machine with
``python -m pytest tests/gpu -q``. Every registered backbone and every method × backbone pair is
checked, so a module that keeps a tensor outside its parameters and buffers (and so stays on the CPU
after ``.to("cuda")``) fails here.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

from intentrec.data.batch import SessionBatch  # noqa: E402
from intentrec.models.methods import METHODS, FeatureTable, build_method  # noqa: E402
from intentrec.models.methods.registry import load_all as load_methods  # noqa: E402
from intentrec.models.registry import BACKBONES, build_backbone  # noqa: E402
from intentrec.models.registry import load_all as load_backbones  # noqa: E402
from tests.helpers.models import METHOD_TEST_SETTINGS  # noqa: E402
from tests.helpers.tiny_dataset import write_tiny_dataset  # noqa: E402

load_backbones()
load_methods()
SESSIONS = [[3], [7], [1, 2], [5, 9, 4], [12, 3, 8, 30], [6, 6, 2], [10, 11, 12, 13, 14], [21, 4, 17, 2, 9, 25]]
TARGETS = [4, 8, 3, 11, 1, 14, 15, 26]
EXAMPLE_IDS = [0, 7, 3, 42, 5, 11, 9, 20]
TEXT_DIM = 12
DEVICE = torch.device("cuda")  # the helpers below take it from here (a CPU dry run sets it to cpu)
# float32 on both sides; cuBLAS and the CPU sum in different orders, nothing more
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 shortcuts, so the comparison measures our code, not the matmul precision setting."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


def batch() -> SessionBatch:
    return SessionBatch.from_lists(SESSIONS, targets=TARGETS, example_ids=EXAMPLE_IDS)


def synthetic_tables(method) -> dict[str, FeatureTable]:
    rng = np.random.default_rng(0)
    ids = np.arange(64)
    tables = {}
    for name in method.feature_names():
        vectors = rng.normal(size=(len(ids), TEXT_DIM)).astype(np.float32)
        tables[name] = FeatureTable(
            ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.ones(len(ids), bool)
        )
    return tables


def no_dropout(config_class) -> dict[str, float]:
    """Every dropout rate of a config set to 0: CPU and CUDA draw different masks from the same seed."""
    return {name: 0.0 for name in config_class.model_fields if "dropout" in name}


def build(backbone_name: str, dataset, method_name: str | None = None):
    torch.manual_seed(0)
    model = build_backbone(backbone_name, dataset.num_items, no_dropout(BACKBONES.get(backbone_name).Config))
    model.prepare(dataset)
    if method_name is not None:
        settings = {**METHOD_TEST_SETTINGS.get(method_name, {}), **no_dropout(METHODS.get(method_name).Config)}
        model = build_method(method_name, model, settings)
        model.attach(synthetic_tables(model))
    return model


def assert_same_on_cuda(model) -> None:
    """Eval scores, the training loss and every gradient match between CPU and CUDA (dropout rates 0).

    The loss runs in training mode: cuDNN's RNN has no backward pass in eval mode.
    """
    cpu, gpu = model.eval(), copy.deepcopy(model).to(DEVICE).eval()
    b_cpu, b_gpu = batch(), batch().to(DEVICE)
    for name, tensor in list(gpu.named_parameters()) + list(gpu.named_buffers()):
        assert tensor.device.type == DEVICE.type, f"{name} stayed on {tensor.device}"
    with torch.no_grad():
        torch.testing.assert_close(gpu(b_gpu).cpu(), cpu(b_cpu), rtol=RTOL, atol=ATOL)
    losses = []
    for m, b in ((cpu, b_cpu), (gpu, b_gpu)):
        m.train()
        m.zero_grad(set_to_none=True)
        loss = m.loss(b)
        loss.backward()
        losses.append(loss.detach().cpu())
    torch.testing.assert_close(losses[1], losses[0], rtol=RTOL, atol=ATOL)
    for (name, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert (p_cpu.grad is None) == (p_gpu.grad is None), name
        if p_cpu.grad is not None:
            scale = p_cpu.grad.abs().max().item()
            torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=RTOL, atol=ATOL * max(scale, 1.0), msg=name)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_matches_cpu(name, tiny_dataset):
    assert_same_on_cuda(build(name, tiny_dataset))


@pytest.mark.parametrize("method_name,backbone_name", [(m, b) for m in METHODS.names() for b in BACKBONES.names()])
def test_method_matches_cpu(method_name, backbone_name, tiny_dataset):
    assert_same_on_cuda(build(backbone_name, tiny_dataset, method_name))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_training_on_cuda_resumes_like_an_uninterrupted_run(name, tiny_dataset, tmp_path):
    """kill-and-resume on CUDA (the CUDA RNG state is checkpointed too) ends where one run ends.

    CUDA's atomic scatter-adds sum in a varying order, so two identical runs differ in the last bits;
    the comparison allows that, not a lost or repeated epoch (which moves the loss by far more).
    """
    from intentrec.training import train

    settings = {"epochs": 3, "seed": 3, "num_threads": 1, "patience": None, "device": str(DEVICE), "batch_size": 32}
    full = train(tiny_dataset.path, name, None, settings, out=tmp_path / "full", progress=False)
    train(tiny_dataset.path, name, None, {**settings, "epochs": 1}, out=tmp_path / "split", progress=False)
    split = train(tiny_dataset.path, name, None, settings, out=tmp_path / "split", progress=False)
    assert split.epochs_run == full.epochs_run == 3
    losses = [[r["loss"] for r in result.history] for result in (full, split)]
    assert np.isfinite(losses[0]).all()
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-3)
    assert all(np.isfinite(v) for v in full.test.values())


def test_llmgr_step_on_cuda_matches_the_cpu_step(tiny_dataset):
    """LLMGR (tiny random LM): a training step on CUDA equals the CPU step; with bf16 autocast (the
    default on CUDA) the loss agrees to bf16 precision and the updated weights stay close."""
    from tests.helpers.llmgr import TINY_LLMGR

    steps = []
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        backbone = build_backbone("gcsan", tiny_dataset.num_items, {})
        model = build_method("llmgr", backbone, {**TINY_LLMGR, "lora_dropout": 0.0, "cuda_dtype": dtype})
        model.prepare(tiny_dataset)
        models = (model, copy.deepcopy(model).to(DEVICE))
        results = []
        for m, device in zip(models, (torch.device("cpu"), DEVICE)):
            from intentrec.training.config import TrainerConfig

            plan = m.training_plan(TrainerConfig(batch_size=16), device)
            m.train()
            plan.optimizer.zero_grad(set_to_none=True)
            loss = m.loss(batch().to(device))
            loss.backward()
            plan.optimizer.step()
            results.append((loss.item(), {k: v.detach().cpu() for k, v in m.checkpoint_state().items()}))
        steps.append(results)
    (cpu_loss, cpu_state), (gpu_loss, gpu_state) = steps[0]
    assert gpu_loss == pytest.approx(cpu_loss, rel=RTOL, abs=ATOL)
    for key in cpu_state:
        torch.testing.assert_close(gpu_state[key], cpu_state[key], rtol=RTOL, atol=1e-4, msg=key)
    (cpu_loss, cpu_state), (bf16_loss, bf16_state) = steps[1]
    assert bf16_loss == pytest.approx(cpu_loss, rel=2e-2)
    for key in cpu_state:  # AdamW's first step moves each weight by about lr: bf16 noise stays below it
        torch.testing.assert_close(bf16_state[key], cpu_state[key], rtol=0, atol=3e-3, msg=key)
