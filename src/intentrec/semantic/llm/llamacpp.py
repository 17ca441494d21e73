"""In-process llama.cpp backend (``llama-cpp-python``'s low-level API), built for throughput on CPU.

Three things make it much faster than calling a model one prompt at a time:

* **Parallel sequences.** ``n_parallel`` slots decode together: every step puts one token of each
  answering slot (plus pending prompt tokens of the others) into a single ``llama_batch``, so the
  weights are read from memory once per step instead of once per sequence.
* **Prefix reuse.** Prompts are sorted by their token ids, so neighbours share the longest prefixes
  (the system message, the template, and for prefix-augmented sessions most of the item list). The
  sorted list is cut into one contiguous run per slot; each slot keeps its KV cache between prompts
  and only evaluates the tokens after the longest common prefix with what it already holds.
* **Shared prefix.** The prefix every prompt of a call has in common (system message and the
  template's fixed text) is evaluated once, on one slot, and its KV cache is copied to the other
  slots with ``llama_memory_seq_cp`` instead of being evaluated again on each of them.
* The per-sequence KV cache (``kv_unified=False``) puts each slot in its own cache stream, so a
  sequence's attention never depends on what the other slots hold. (Across streams llama.cpp only
  copies a whole stream, which is why the shared prefix is copied before a slot's own tokens.)

Sampling is done here in numpy (greedy by default; temperature/top-p with a per-prompt seeded
generator), so an answer does not depend on the order of the prompts or on which slot ran it; the
kernels' rounding still depends on the batch shape, which can flip a sampled token near a boundary.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from intentrec.config import Config
from intentrec.errors import IntentrecError
from intentrec.semantic.llm.base import (
    BACKENDS,
    DecodingConfig,
    Generation,
    LLMBackend,
    LLMSpec,
    OnResult,
    Prompt,
    check_prompts,
)
from intentrec.semantic.llm.cpu_variants import ensure_cpu_backend
from intentrec.semantic.llm.models import SHIPPED, cached_sha256, ensure_shipped_model


class LlamaCppConfig(Config):
    n_parallel: int = Field(8, ge=1, le=64)  # sequences decoded together
    n_ctx_per_seq: int = Field(2048, ge=64)  # KV cells per sequence (prompt + answer)
    n_batch: int = Field(512, ge=16)  # most tokens in one llama_decode call
    #: None: half the usable cores (at least 1). ggml's worker threads spin while they wait, so
    #: using every core of a shared or busy machine collapses throughput (measured here: 2 threads
    #: on 2 busy cores were 5-15x slower than 1).
    n_threads: int | None = Field(None, ge=1)
    reuse_prefix: bool = True  # keep each slot's KV cache between prompts
    sort_prompts: bool = True  # order prompts so that neighbours share prefixes
    #: Evaluate the prefix common to all prompts of a call once and copy its KV cache to the other
    #: slots (needs reuse_prefix). Only done when that prefix has at least share_prefix_min tokens.
    share_prefix: bool = True
    share_prefix_min: int = Field(16, ge=1)
    #: Off by default: with it, llama.cpp's CPU kernels give slightly different logits depending on
    #: how many tokens share a batch, which flips some greedy answers between the naive loop and
    #: the batched engine (measured on SmolLM2); without it, answers do not depend on batching.
    flash_attention: bool = False
    repack_weights: bool = True
    #: Which llama.cpp CPU kernels to load when the install has run-time variants
    #: (intentrec.semantic.llm.cpu_variants): None = $INTENTREC_LLAMA_CPU_VARIANT or "auto".
    cpu_variant: str | None = None
    verbose: bool = False


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise IntentrecError(
            "the llamacpp backend needs llama-cpp-python; install it with scripts/install-llm.sh "
            "(or: pip install 'llama-cpp-python>=0.3.36')"
        ) from None
    return llama_cpp


@dataclass
class _Job:
    index: int
    tokens: list[int]
    rng: np.random.Generator | None
    started: float
    generated: list[int] = field(default_factory=list)
    text_bytes: bytearray = field(default_factory=bytearray)


@dataclass
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV entries this sequence holds
    pending: list[int] = field(default_factory=list)  # tokens to feed next
    job: _Job | None = None
    queue: list[int] = field(default_factory=list)  # prompt indices still to run on this slot


def default_threads() -> int:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, usable // 2)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n]) != np.asarray(b[:n])
    return int(np.argmax(x)) if x.any() else n


def split_runs(order: Sequence[int], n: int) -> list[list[int]]:
    """Cut ``order`` into ``n`` contiguous runs of near-equal length (some may be empty)."""
    return [list(map(int, run)) for run in np.array_split(np.asarray(order, dtype=np.int64), n)]


@BACKENDS.register("llamacpp")
class LlamaCppBackend(LLMBackend):
    """Specs: a shipped model's short name, or a path ending in ``.gguf``."""

    @classmethod
    def claims(cls, spec: str) -> bool:
        return spec in SHIPPED or spec.lower().endswith(".gguf")

    @classmethod
    def spec_forms(cls) -> list[str]:
        return [f"a known model ({', '.join(sorted(SHIPPED))})", "a .gguf file"]

    @classmethod
    def parse_spec(cls, spec: str, opts: dict[str, Any]) -> LLMSpec:
        if spec in SHIPPED:
            return LLMSpec(cls.registry_name, spec, shipped=True)
        path = Path(spec).expanduser()
        if not path.is_file():
            raise IntentrecError(f"--llm {spec}: GGUF file not found")
        return LLMSpec(cls.registry_name, str(path.resolve()))

    @classmethod
    def spec_identity(cls, spec: LLMSpec, opts: dict[str, Any]) -> dict[str, str]:
        # Shipped models use their pinned sha256: no hashing, and the packages need not be installed.
        if spec.shipped:
            return {"backend": "llamacpp", "model": spec.target, "model_sha256": SHIPPED[spec.target].sha256}
        return {"backend": "llamacpp", "model": Path(spec.target).name, "model_sha256": cached_sha256(spec.target)}

    @classmethod
    def from_spec(cls, spec: LLMSpec, opts: dict[str, Any], *, text: str) -> LlamaCppBackend:
        config = LlamaCppConfig.build(opts, where=f"llamacpp options for {text}")
        path = ensure_shipped_model(spec.target) if spec.shipped else Path(spec.target)
        return cls(path, cls.spec_identity(spec, {}), config)

    def __init__(self, model_path: str | os.PathLike[str], identity: dict[str, str], config: LlamaCppConfig):
        llama_cpp = _import_llama_cpp()
        self._lib = llama_cpp
        self.config = config
        self._identity = dict(identity)
        self.model_path = Path(model_path)
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if config.verbose else logging.ERROR)
        self.cpu_backend = ensure_cpu_backend(config.cpu_variant)
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.use_extra_bufts = config.repack_weights
        self._model = llama_cpp.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise IntentrecError(f"llama.cpp could not load the model file {self.model_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        cparams = llama_cpp.llama_context_default_params()
        n_slots = config.n_parallel
        cparams.n_ctx = config.n_ctx_per_seq * n_slots
        cparams.n_batch = config.n_batch
        cparams.n_ubatch = config.n_batch
        cparams.n_seq_max = n_slots
        threads = config.n_threads or default_threads()
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False
        cparams.no_perf = True
        cparams.flash_attn_type = 1 if config.flash_attention else 0
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise IntentrecError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {self.model_path}"
            )
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx_per_seq = int(llama_cpp.llama_n_ctx_seq(self._ctx))
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        b = self._batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(config.n_batch,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(config.n_batch,))
        self._b_nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(config.n_batch,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(config.n_batch,))
        self._b_nseq[:] = 1
        self._slots = [_Slot(seq_id=s) for s in range(n_slots)]
        tmpl = llama_cpp.llama_model_chat_template(self._model, None)
        self._chat_template: bytes | None = tmpl
        self._piece_cache: dict[int, bytes] = {}
        self._closed = False
        #: Work counters since load: prompt tokens actually evaluated (after prefix reuse), prompt
        #: tokens submitted, and llama_decode calls.
        #: prompt_tokens_shared: prompt tokens a slot got by a KV copy instead of evaluating them.
        self.counters = {
            "prompt_tokens_evaluated": 0,
            "prompt_tokens": 0,
            "prompt_tokens_shared": 0,
            "kv_copies": 0,
            "decode_calls": 0,
        }

    # -- identity and text ----------------------------------------------------------------------
    def identity(self) -> dict[str, str]:
        return dict(self._identity)

    def render(self, messages: Prompt) -> str:
        """The prompt text after the model's chat template (with the assistant turn opened)."""
        lib = self._lib
        arr = (lib.llama_chat_message * len(messages))()
        keep = []
        for i, m in enumerate(messages):
            role, content = m["role"].encode(), m["content"].encode()
            keep += [role, content]
            arr[i].role = role
            arr[i].content = content
        size = max(1024, 2 * sum(len(x) for x in keep) + 256)
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = lib.llama_chat_apply_template(self._chat_template, arr, len(messages), True, buf, size)
            if n < 0:
                raise IntentrecError(f"llama.cpp cannot apply the chat template of {self.model_path}")
            if n <= size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1
        raise IntentrecError("chat template output kept growing")  # pragma: no cover

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (self._lib.llama_token * cap)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, cap, True, special)
        if n < 0:
            cap = -n
            buf = (self._lib.llama_token * cap)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, cap, True, special)
        return list(buf[:n])

    def prompt_tokens(self, messages: Prompt) -> list[int]:
        return self.tokenize(self.render(messages))

    def prompt_length(self, prompt: Prompt) -> int:
        return len(self.prompt_tokens(prompt))

    def context_tokens(self) -> int:
        return self.n_ctx_per_seq

    def _piece(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            piece = buf.raw[:n]
            self._piece_cache[token] = piece
        return piece

    # -- generation -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every cached prefix (the next prompts are evaluated from scratch)."""
        self._lib.llama_memory_clear(self._mem, True)
        for slot in self._slots:
            slot.cached, slot.pending, slot.job, slot.queue = [], [], None, []

    def generate(
        self,
        prompts: Sequence[Prompt],
        decoding: DecodingConfig,
        on_result: OnResult | None = None,
    ) -> list[Generation]:
        if self._closed:
            raise IntentrecError("this llama.cpp backend is closed")
        check_prompts(prompts)
        token_lists = [self.prompt_tokens(p) for p in prompts]
        for i, toks in enumerate(token_lists):
            if len(toks) + decoding.max_tokens > self.n_ctx_per_seq:
                raise IntentrecError(
                    f"prompt {i} has {len(toks)} tokens; with max_tokens={decoding.max_tokens} it does not "
                    f"fit the {self.n_ctx_per_seq}-token context per sequence (raise n_ctx_per_seq, or "
                    "shorten the template's session/candidate limits)"
                )
        results: list[Generation | None] = [None] * len(prompts)
        if not prompts:
            return []
        order = list(range(len(prompts)))
        if self.config.sort_prompts:
            order.sort(key=lambda i: token_lists[i])
        if not self.config.reuse_prefix:
            self.reset()
        for slot, run in zip(self._slots, split_runs(order, len(self._slots))):
            slot.queue = run
        try:
            if self.config.reuse_prefix and self.config.share_prefix:
                self._share_prefix(token_lists, order)
            self._run(token_lists, decoding, results, on_result)
        except BaseException:
            self.reset()  # half-fed sequences would corrupt the next call's prefix reuse
            raise
        return results  # type: ignore[return-value]

    def _share_prefix(self, token_lists: list[list[int]], order: list[int]) -> None:
        """Put the prefix common to every prompt into each slot that will run one, evaluating it once.

        In sorted order the common prefix of all prompts is that of the first and the last. One slot
        (the one already holding most of it) evaluates what it lacks; every other slot with work and
        less than the prefix cached receives a copy of that slot's whole KV stream.
        """
        lib = self._lib
        first, last = token_lists[order[0]], token_lists[order[-1]]
        shortest = min(len(t) for t in token_lists)
        n_shared = min(common_prefix_length(first, last), shortest - 1)
        if n_shared < self.config.share_prefix_min:
            return
        prefix = first[:n_shared]
        workers = [s for s in self._slots if s.queue]
        needy = [s for s in workers if common_prefix_length(s.cached, prefix) < n_shared]
        if len(workers) < 2 or not needy:
            return
        src = max(self._slots, key=lambda s: common_prefix_length(s.cached, prefix))
        have = common_prefix_length(src.cached, prefix)
        if len(needy) == 1 and needy[0] is src:
            return  # only the source needs it: _start evaluates it there anyway
        if have < n_shared:
            lib.llama_memory_seq_rm(self._mem, src.seq_id, have, -1)
            src.cached = src.cached[:have]
            self._prefill(src, prefix[have:])
        for dst in needy:
            if dst is src:
                continue
            lib.llama_memory_seq_rm(self._mem, dst.seq_id, -1, -1)
            # across cache streams llama.cpp copies the whole stream (positions must be -1, -1)
            lib.llama_memory_seq_cp(self._mem, src.seq_id, dst.seq_id, -1, -1)
            dst.cached = list(src.cached)
            self.counters["kv_copies"] += 1
            self.counters["prompt_tokens_shared"] += n_shared

    def _prefill(self, slot: _Slot, tokens: list[int]) -> None:
        """Evaluate ``tokens`` after what ``slot`` holds, without asking for logits."""
        n_batch = self.config.n_batch
        for at in range(0, len(tokens), n_batch):
            chunk = tokens[at : at + n_batch]
            self._put(0, slot, chunk)
            self._decode(len(chunk))
            self.counters["prompt_tokens_evaluated"] += len(chunk)

    def _put(self, n: int, slot: _Slot, chunk: list[int]) -> None:
        """Write ``chunk`` into the batch at row ``n`` as the next tokens of ``slot`` (no logits)."""
        take = len(chunk)
        start = len(slot.cached)
        self._b_token[n : n + take] = chunk
        self._b_pos[n : n + take] = np.arange(start, start + take)
        self._b_logits[n : n + take] = 0
        seq_ids = self._batch.seq_id
        for j in range(n, n + take):
            seq_ids[j][0] = slot.seq_id
        slot.cached.extend(chunk)

    def _decode(self, n_tokens: int) -> None:
        self._batch.n_tokens = n_tokens
        rc = self._lib.llama_decode(self._ctx, self._batch)
        self.counters["decode_calls"] += 1
        if rc != 0:
            raise IntentrecError(f"llama_decode failed with status {rc}")

    def _start(self, slot: _Slot, index: int, tokens: list[int], decoding: DecodingConfig) -> None:
        lib = self._lib
        keep = common_prefix_length(slot.cached, tokens) if self.config.reuse_prefix else 0
        keep = min(keep, len(tokens) - 1)  # the last prompt token must be evaluated to get logits
        lib.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1)
        slot.cached = slot.cached[:keep]
        slot.pending = tokens[keep:]
        self.counters["prompt_tokens"] += len(tokens)
        self.counters["prompt_tokens_evaluated"] += len(tokens) - keep
        rng = None
        if not decoding.greedy:
            digest = hashlib.sha256(np.asarray(tokens, dtype=np.int32).tobytes()).digest()
            rng = np.random.default_rng([decoding.seed, int.from_bytes(digest[:8], "little")])
        slot.job = _Job(index=index, tokens=tokens, rng=rng, started=time.perf_counter())

    def _run(self, token_lists, decoding: DecodingConfig, results, on_result) -> None:
        n_batch = self.config.n_batch
        while True:
            for slot in self._slots:
                if slot.job is None:
                    if not slot.queue:  # steal the far end of the longest remaining run
                        donor = max(self._slots, key=lambda s: len(s.queue))
                        if len(donor.queue) > 1:
                            half = len(donor.queue) // 2
                            slot.queue, donor.queue = donor.queue[half:], donor.queue[:half]
                    if slot.queue:
                        idx = slot.queue.pop(0)
                        self._start(slot, idx, token_lists[idx], decoding)
            active = [s for s in self._slots if s.job is not None]
            if not active:
                return
            # one token for every answering slot first, then prompt tokens in the remaining room
            n = 0
            outputs: list[tuple[_Slot, int]] = []
            for phase_answering in (True, False):
                for slot in active:
                    answering = bool(slot.job.generated)
                    if answering != phase_answering or not slot.pending or n >= n_batch:
                        continue
                    take = min(len(slot.pending), n_batch - n)
                    self._put(n, slot, slot.pending[:take])
                    slot.pending = slot.pending[take:]
                    if not slot.pending:
                        self._b_logits[n + take - 1] = 1
                        outputs.append((slot, n + take - 1))
                    n += take
            self._decode(n)
            for slot, row in outputs:
                self._advance(slot, row, decoding, results, on_result)

    def _advance(self, slot: _Slot, row: int, decoding: DecodingConfig, results, on_result) -> None:
        lib = self._lib
        job = slot.job
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, row), shape=(self.n_vocab,))
        token = self._sample(logits, job, decoding)
        job.generated.append(token)
        finished = bool(lib.llama_vocab_is_eog(self._vocab, token))
        if not finished:
            job.text_bytes += self._piece(token)
            if decoding.stop:
                text = job.text_bytes.decode("utf-8", errors="ignore")
                cut = min((p for p in (text.find(s) for s in decoding.stop if s) if p >= 0), default=-1)
                if cut >= 0:
                    job.text_bytes = bytearray(text[:cut].encode("utf-8"))
                    finished = True
        if not finished and len(job.generated) < decoding.max_tokens and len(slot.cached) + 1 < self.n_ctx_per_seq:
            slot.pending = [token]
            return
        gen = Generation(
            text=job.text_bytes.decode("utf-8", errors="ignore"),
            prompt_tokens=len(job.tokens),
            completion_tokens=len(job.generated),
            seconds=time.perf_counter() - job.started,
        )
        results[job.index] = gen
        slot.job, slot.pending = None, []
        if on_result is not None:
            on_result(job.index, gen)

    @staticmethod
    def _sample(raw: np.ndarray, job: _Job, decoding: DecodingConfig) -> int:
        logits = np.array(raw, dtype=np.float32)
        if decoding.repeat_penalty != 1.0 and decoding.repeat_last_n > 0:
            history = (job.tokens + job.generated)[-decoding.repeat_last_n :]
            seen = np.unique(np.asarray(history, dtype=np.int64))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / decoding.repeat_penalty, vals * decoding.repeat_penalty)
        if decoding.greedy:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / decoding.temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        if decoding.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cum, decoding.top_p)) + 1]
            q = p[keep] / p[keep].sum()
            return int(keep[job.rng.choice(len(keep), p=q)])
        return int(job.rng.choice(len(p), p=p))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        lib = self._lib
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        lib.llama_model_free(self._model)

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass
