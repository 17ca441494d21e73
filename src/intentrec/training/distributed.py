"""Training in several processes with PyTorch DDP: under ``torchrun``, or ``intentrec train --ddp --nproc N``.

Every process (rank) builds the same model from the same seed and walks the same global batches as
one process with that seed would; rank ``r`` trains on the ``r``-th contiguous shard of each global
batch (``train.batch_size`` is the global batch, split evenly over the ranks). Each rank's loss is
weighted by its share of the batch, so the gradient DDP averages is the one-process gradient of the
whole global batch (for losses that are means over examples; in-batch terms such as contrastive
negatives see one shard). Evaluation is sharded the same way: every rank ranks its contiguous part of
the split and gathers all ranks' per-example target ranks, so every rank computes the exact metrics
over the full split, in file order.

Rank 0 alone writes the run folder (config, log, checkpoints, metrics) and holds its lock; after every
epoch it broadcasts the bookkeeping (best epoch, patience, early stopping), which also makes the other
ranks wait until the files are written. Ranks reseed their random generators from (seed, epoch,
rank) at the start of each epoch, so a resumed run (all ranks load rank 0's resume state) continues
exactly as the uninterrupted one.

Backends: gloo on CPU, NCCL on CUDA (``cuda:LOCAL_RANK``). :func:`launch` is a minimal local
``torchrun``: it starts N copies of a command on 127.0.0.1, with a rendezvous store on a port the
operating system picked (held until the end, so no other program can take it), and stops them all
as soon as one fails.
"""

from __future__ import annotations

import atexit
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import ExampleSet
from intentrec.errors import ConfigError, IntentrecError
from intentrec.evaluation.metrics import metrics_from_ranks

T = TypeVar("T")

#: The variables torchrun sets that mark a process as one rank of a DDP job.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Set by :func:`launch` to its pid: a rank stops when its launcher dies.
LAUNCHER_ENV = "INTENTREC_DDP_LAUNCHER"
HOW_TO_LAUNCH = (
    "start it with torchrun (torchrun --nproc-per-node N -m intentrec.cli.main train ...) or let intentrec "
    "start the processes (intentrec train ... --ddp --nproc N)"
)


class RankZeroFailed(IntentrecError):
    """Raised on ranks 1.. when rank 0 stopped with an error (rank 0 reports the error itself)."""


def torchrun_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started as one rank of a DDP job (torchrun's environment variables)."""
    environ = os.environ if environ is None else environ
    return all(environ.get(name) for name in TORCHRUN_ENV)


def process_rank() -> int:
    """This process's rank under torchrun, else 0 (what the CLI uses to decide who prints)."""
    return int(os.environ["RANK"]) if torchrun_env() else 0


def uses_cuda(device: str) -> bool:
    if device == "mps":
        raise ConfigError("DDP training runs on CPU (gloo) or CUDA (NCCL), not on device 'mps'")
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def check_world(batch_size: int, world_size: int) -> None:
    """``train.batch_size`` is the global batch: it must split evenly over the processes."""
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size {batch_size} is the global batch and must be divisible by the {world_size} "
            f"processes (each trains on batch_size / {world_size} examples of every batch)"
        )


def local_world_size(nproc: int | None, device: str) -> int:
    """How many processes ``intentrec train --ddp`` starts: ``nproc``, or one per visible GPU on CUDA."""
    if nproc is not None:
        if nproc < 1:
            raise ConfigError(f"--nproc must be at least 1, got {nproc}")
        if uses_cuda(device) and torch.cuda.is_available() and nproc > torch.cuda.device_count():
            raise ConfigError(f"--nproc {nproc} needs as many GPUs, but {torch.cuda.device_count()} are visible")
        return nproc
    if uses_cuda(device):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' requested but CUDA is not available (use device=cpu)")
        return torch.cuda.device_count()
    raise ConfigError("--ddp on CPU needs the number of processes: --nproc N")


# --------------------------------------------------------------------------- one rank


class _LossOf(nn.Module):
    """Lets DDP see ``loss_fn(batch)`` (``model.loss`` or a phase's loss) as the wrapped module's forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, loss_fn: Callable[[SessionBatch], torch.Tensor], batch: SessionBatch) -> torch.Tensor:
        return loss_fn(batch)


@dataclass
class Distributed:
    """This process's place in the DDP job, and the collective steps the trainer takes."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    _ddp: nn.parallel.DistributedDataParallel | None = field(default=None, init=False, repr=False)
    # (examples of this rank, examples of the global batch) of the batch last yielded by `batches`
    _shard: tuple[int, int] = field(default=(0, 0), init=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}

    # ------------------------------------------------------------ collectives
    def barrier(self) -> None:
        torch.distributed.barrier(device_ids=[self.local_rank] if self.backend == "nccl" else None)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (the other ranks' argument is ignored)."""
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only; every rank returns its result, or raises when it raised."""
        if not self.is_main:
            outcome = self.broadcast(None)
            if isinstance(outcome, _Failure):
                raise RankZeroFailed(f"rank 0 stopped: {outcome.message}")
            return outcome
        try:
            result = fn()
        except Exception as exc:
            self.broadcast(_Failure(str(exc)))
            raise
        return self.broadcast(result)

    def main_first(self, fn: Callable[[], None]) -> None:
        """``fn()`` on rank 0, then on the other ranks (which then find what rank 0 wrote, e.g. a cache)."""
        self.run_on_main(fn)
        if not self.is_main:
            fn()

    @contextmanager
    def held_by_main(self, enter: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
        """Rank 0 holds the context ``enter()`` (the run folder's lock) while every rank runs the block."""
        with ExitStack() as stack:

            def hold() -> None:
                stack.enter_context(enter())

            self.run_on_main(hold)
            yield

    def check_model(self, model: nn.Module, trains: bool) -> None:
        if not trains:
            name = getattr(model, "registry_name", type(model).__name__)
            raise ConfigError(
                f"'{name}' has nothing to train in this configuration (its run is one evaluation pass); "
                "run it in one process, without --ddp or torchrun"
            )

    # ------------------------------------------------------------ training
    def batches(
        self, examples: ExampleSet, batch_size: int, *, seed: int, max_length: int | None
    ) -> Iterator[SessionBatch]:
        """This rank's shard of every global batch of ``examples.batches(batch_size, shuffle=True, seed=seed)``.

        A last global batch smaller than the number of ranks leaves some ranks nothing: they take its
        first example with weight 0, so every rank still steps through the same collectives.
        """
        self._seed_rank(seed)
        for rows in examples.batch_rows(batch_size, shuffle=True, seed=seed):
            mine = np.array_split(rows, self.world_size)[self.rank]
            self._shard = (len(mine), len(rows))
            yield examples.batch(mine if len(mine) else rows[:1], max_length)

    def _seed_rank(self, seed: int) -> None:
        # per rank (dropout masks differ across shards) and per epoch (a resumed epoch draws the same)
        value = (seed * 1_000_003 + self.rank) % 2**63
        random.seed(value)
        np.random.seed(value % 2**32)
        torch.manual_seed(value)

    def forward_backward(
        self,
        model: nn.Module,
        loss_fn: Callable[[SessionBatch], torch.Tensor],
        batch: SessionBatch,
        *,
        sync: bool,
        accumulate: int,
    ) -> tuple[torch.Tensor, int]:
        """Loss and backward of this rank's shard (gradients all-reduced when ``sync``, i.e. before an
        optimiser step); returns (loss × examples, examples) of the shard."""
        ddp = self._wrapped(model)
        count, total = self._shard
        # DDP averages over ranks; weighting rank r by n_r · W / N makes that the mean over the N examples
        weight = count * self.world_size / (total * accumulate)
        with nullcontext() if sync else ddp.no_sync():
            loss = ddp(loss_fn, batch)
            (loss * weight).backward()
        return loss.detach() * count, count

    def _wrapped(self, model: nn.Module) -> nn.parallel.DistributedDataParallel:
        if self._ddp is None or self._ddp.module.model is not model:
            # Parameters a loss does not reach are normal here (a phase's loss, a branch a batch does not
            # take); DDP leaves globally unused ones without a gradient, as one process would. Its one-time
            # warning that none was unused in the first step is expected.
            self._ddp = nn.parallel.DistributedDataParallel(
                _LossOf(model),
                device_ids=[self.local_rank] if self.backend == "nccl" else None,
                find_unused_parameters=True,
            )
        return self._ddp

    def sum_loss(self, total: torch.Tensor, seen: int) -> tuple[torch.Tensor, int]:
        """The epoch's summed loss and example count over all ranks."""
        both = torch.stack([total.double(), torch.tensor(float(seen), dtype=torch.float64, device=total.device)])
        both = both.to(self.device)
        torch.distributed.all_reduce(both)
        return both[0], int(both[1].item())

    # ------------------------------------------------------------ evaluation
    def evaluate(
        self,
        model: nn.Module,
        examples: ExampleSet,
        *,
        ks: Sequence[int],
        batch_size: int,
        max_length: int | None,
        device: torch.device,
    ) -> dict[str, float]:
        """Exact metrics over all of ``examples``: each rank ranks a contiguous part, all gather the ranks."""
        from intentrec.evaluation.evaluate import rank_examples

        parts = np.array_split(np.arange(len(examples)), self.world_size)
        mine = rank_examples(
            model, examples.subset(parts[self.rank]), batch_size=batch_size, max_length=max_length, device=device
        )
        return metrics_from_ranks(self.gather(mine.ranks, [len(p) for p in parts]), ks)

    def gather(self, values: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
        """Every rank's int64 ``values`` (rank r has ``sizes[r]`` of them), concatenated in rank order."""
        width = max(max(sizes), 1)
        local = torch.zeros(width, dtype=torch.int64, device=self.device)
        local[: len(values)] = torch.as_tensor(values, dtype=torch.int64, device=self.device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]).cpu().numpy()


@dataclass
class _Failure:
    message: str


_current: Distributed | None = None


def join(device: str) -> Distributed:
    """This process's rank in the DDP job that torchrun (or :func:`launch`) started; the process
    group is created on the first call and kept for the process's life."""
    global _current
    if not torchrun_env():
        missing = ", ".join(name for name in TORCHRUN_ENV if not os.environ.get(name))
        raise ConfigError(
            f"DDP training needs the environment of a torchrun launch ({missing} not set); {HOW_TO_LAUNCH}"
        )
    rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if uses_cuda(device):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' requested but CUDA is not available (use device=cpu)")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} needs a GPU of its own, but {torch.cuda.device_count()} are visible")
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if _current is not None:
        if _current.device != dev:
            raise ConfigError(f"this process already trains with DDP on {_current.device}, not {dev}")
        return _current
    _stop_with_launcher()
    if torch.distributed.is_initialized():
        if torch.distributed.get_backend() != backend:
            raise ConfigError(
                f"the process group uses {torch.distributed.get_backend()}; device '{device}' needs {backend}"
            )
    else:
        if backend == "nccl":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
        atexit.register(_leave)
    _current = Distributed(rank, world, local, backend, dev)
    return _current


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _stop_with_launcher() -> None:
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(launcher):  # the launcher died before prctl took effect
        os._exit(1)


# --------------------------------------------------------------------------- launching


def launch(
    command: Sequence[str], nproc: int, *, env: Mapping[str, str] | None = None, grace_seconds: float = 5.0
) -> int:
    """Run ``command`` as ranks 0..nproc-1 of one DDP job on this machine (what torchrun does for one node).

    Returns 0 when every rank exits with 0; otherwise, as soon as one fails, the others are stopped
    (SIGTERM, then SIGKILL after ``grace_seconds``) and the exit status of the lowest failed rank is
    returned (negative: killed by that signal). The ranks are stopped on any exit, Ctrl-C included.
    """
    from torch.distributed import TCPStore

    # port 0: the OS picks a free port, and this store keeps it until the ranks are done, so nothing
    # can take it between choosing and using (the ranks connect as clients, as under torchrun's agent)
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    base = dict(os.environ if env is None else env)
    threads = base.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for rank in range(nproc):
            rank_env = {
                **base,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc),
                "GROUP_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(store.port),
                "TORCHELASTIC_USE_AGENT_STORE": "True",
                "OMP_NUM_THREADS": threads,
                LAUNCHER_ENV: str(os.getpid()),
            }
            procs.append(subprocess.Popen(list(command), env=rank_env))
        return _wait(procs)
    finally:
        _stop(procs, grace_seconds)
        del store


def _wait(procs: list[subprocess.Popen[bytes]]) -> int:
    while True:
        codes = [p.poll() for p in procs]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            return failed[0]
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[bytes]], grace_seconds: float) -> None:
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + grace_seconds
    for p in alive:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
