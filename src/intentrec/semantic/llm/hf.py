"""Hugging Face ``transformers`` backend: a local causal-LM folder, batched generation with left padding.

Prompts are rendered with the tokenizer's chat template (or, when the tokenizer has none, as
``"System: …\\nUser: …\\nAssistant:"``), sorted by length so that a batch holds similar lengths,
and generated ``batch_size`` at a time on CPU or CUDA. Nothing is downloaded (``local_files_only``).

Differences from the llama.cpp backend, by design of ``transformers``: the repetition penalty looks at
the whole prompt + answer (not only the last ``repeat_last_n`` tokens), and sampled (non-greedy)
answers depend on which prompts share a batch; greedy answers do not depend on the order of prompts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from intentrec.semantic.llm.models import folder_sha256


class HFConfig(Config):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (float32 on CPU, bfloat16 on CUDA) | float32 | float16 | bfloat16
    batch_size: int = Field(8, ge=1, le=1024)


def _fallback_render(messages: Prompt) -> str:
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


@BACKENDS.register("transformers")
class TransformersBackend(LLMBackend):
    """Specs: ``hf:PATH``, a local Hugging Face causal-LM folder."""

    spec_priority = 10  # a prefix form: ``hf:dir.gguf`` is a folder, not a GGUF file

    @classmethod
    def claims(cls, spec: str) -> bool:
        return spec.startswith("hf:")

    @classmethod
    def spec_forms(cls) -> list[str]:
        return ["hf:PATH"]

    @classmethod
    def parse_spec(cls, spec: str, opts: dict[str, Any]) -> LLMSpec:
        path = Path(spec[3:]).expanduser()
        if not path.is_dir():
            raise IntentrecError(f"--llm {spec}: no Hugging Face model folder at {path}")
        return LLMSpec(cls.registry_name, str(path.resolve()))

    @classmethod
    def spec_identity(cls, spec: LLMSpec, opts: dict[str, Any]) -> dict[str, str]:
        return {"backend": "transformers", "model": Path(spec.target).name, "model_sha256": folder_sha256(spec.target)}

    @classmethod
    def from_spec(cls, spec: LLMSpec, opts: dict[str, Any], *, text: str) -> TransformersBackend:
        config = HFConfig.build(opts, where=f"transformers options for {text}")
        return cls(spec.target, cls.spec_identity(spec, {}), config)

    def __init__(self, path: str, identity: dict[str, str], config: HFConfig):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise IntentrecError(
                "the transformers backend needs 'transformers': pip install 'intentrec[llm]'"
            ) from None
        self._torch = torch
        self.config = config
        self._identity = dict(identity)
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if config.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, config.dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise IntentrecError(f"transformers option dtype: unknown dtype {config.dtype!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise IntentrecError(f"cannot load a Hugging Face causal LM from {path}: {exc}") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise IntentrecError(f"{path}: the tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    def identity(self) -> dict[str, str]:
        return dict(self._identity)

    def render(self, messages: Prompt) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _fallback_render(messages)

    def generate(
        self,
        prompts: Sequence[Prompt],
        decoding: DecodingConfig,
        on_result: OnResult | None = None,
    ) -> list[Generation]:
        check_prompts(prompts)
        torch = self._torch
        texts = [self.render(p) for p in prompts]
        with_template = bool(getattr(self.tokenizer, "chat_template", None))
        lengths = [len(self.tokenizer(t, add_special_tokens=not with_template).input_ids) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
        results: list[Generation | None] = [None] * len(texts)
        bs = self.config.batch_size
        for start in range(0, len(order), bs):
            rows = order[start : start + bs]
            started = time.perf_counter()
            enc = self.tokenizer(
                [texts[i] for i in rows],
                return_tensors="pt",
                padding=True,
                add_special_tokens=not with_template,
            ).to(self.device)
            kwargs = dict(
                max_new_tokens=decoding.max_tokens,
                repetition_penalty=decoding.repeat_penalty,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self._eos_ids) or None,
            )
            if decoding.greedy:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            else:
                torch.manual_seed(decoding.seed)
                kwargs.update(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p, top_k=0)
            if decoding.stop:
                kwargs.update(stop_strings=list(decoding.stop), tokenizer=self.tokenizer)
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            seconds = time.perf_counter() - started
            prompt_counts = enc["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(rows):
                gen = self._finish(new[row], int(prompt_counts[row]), decoding, seconds)
                results[i] = gen
                if on_result is not None:
                    on_result(i, gen)
        return results  # type: ignore[return-value]

    def _finish(self, tokens: list[int], prompt_tokens: int, decoding: DecodingConfig, seconds: float) -> Generation:
        # Finished rows are padded; the answer ends at the first end-of-sequence token (counted, as
        # the llama.cpp backend counts it) or, with stop strings, where the stop string ends.
        count = len(tokens)
        pad = self.tokenizer.pad_token_id
        for k, t in enumerate(tokens):
            if t in self._eos_ids or t == pad:
                count = k + 1 if t in self._eos_ids else k
                tokens = tokens[:k]
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if decoding.stop:
            cuts = [p for p in (text.find(s) for s in decoding.stop if s) if p >= 0]
            if cuts:
                text = text[: min(cuts)]
        return Generation(text=text, prompt_tokens=prompt_tokens, completion_tokens=count, seconds=seconds)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
