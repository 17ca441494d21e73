"""The causal LM behind LLMGR: loading (shipped GGUF, a .gguf file, a Hugging Face folder), LoRA, identity.

Specs: a shipped model name (``smollm2``, ``qwen0.5b``, ...: :mod:`intentrec.semantic.llm.models`), a
path ending in ``.gguf``, ``hf:PATH`` (a local Hugging Face folder), or a name registered with
``register_lm_source`` (tests build a tiny random LM this way). Nothing is downloaded. Only the
decoder stack is kept (no vocabulary head: LLMGR reads the last hidden state).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from intentrec.errors import ConfigError, IntentrecError


class TextTokenizer(Protocol):
    def encode(self, texts: list[str], *, first: bool = False) -> list[list[int]]:
        """Token ids of each text; ``first``: the text opens the prompt (the tokenizer's special tokens)."""
        ...


@dataclass
class LoadedLM:
    decoder: nn.Module  # forward(inputs_embeds=, attention_mask=, position_ids=) -> .last_hidden_state
    tokenizer: TextTokenizer
    identity: dict[str, str]
    hidden_size: int


#: name → loader(init, seed) for LMs built in code (tests register a tiny random one)
LM_SOURCES: dict[str, Callable[[str, int], LoadedLM]] = {}


def register_lm_source(name: str, loader: Callable[[str, int], LoadedLM]) -> None:
    LM_SOURCES[name] = loader


class HFTokenizer:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def encode(self, texts: list[str], *, first: bool = False) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=first)["input_ids"]]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise IntentrecError("llmgr needs 'transformers' and 'peft': pip install 'intentrec[lm]'") from None
    return transformers


def random_like(model: nn.Module, seed: int) -> nn.Module:
    """A model of ``model``'s architecture with freshly initialised weights (seeded, same on every run)."""
    transformers = _transformers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)


def _quiet_loading_bars(transformers: Any) -> None:
    transformers.utils.logging.disable_progress_bar()
    # the GGUF reader uses a plain tqdm that the switch above does not reach
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        try:
            import transformers.modeling_gguf_pytorch_utils as gguf_utils
        except ImportError:
            return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        gguf_utils.tqdm = functools.partial(bar, disable=True)


def _load_hf(folder: Path, gguf_file: str | None, spec: str, init: str, seed: int) -> tuple[nn.Module, Any]:
    transformers = _transformers()
    if not sys.stderr.isatty():  # loading and GGUF de-quantising bars would fill a log file
        _quiet_loading_bars(transformers)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise IntentrecError(f"method.lm={spec}: cannot load a causal LM: {exc}") from None
    if init == "random":
        model = random_like(model, seed)
    return model, tokenizer


def load_lm(spec: str, *, init: str = "pretrained", seed: int = 0) -> LoadedLM:
    """The LM named by ``spec``; ``init="random"`` keeps its architecture and tokenizer, not its weights."""
    if spec in LM_SOURCES:
        return LM_SOURCES[spec](init, seed)
    from intentrec.semantic.llm.models import SHIPPED, cached_sha256, ensure_shipped_model, folder_sha256

    if spec in SHIPPED:
        path = ensure_shipped_model(spec)
        identity = {"lm": spec, "sha256": SHIPPED[spec].sha256}
        model, tokenizer = _load_hf(path.parent, path.name, spec, init, seed)
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"method.lm: no GGUF file at {path}")
        identity = {"lm": path.name, "sha256": cached_sha256(path)}
        model, tokenizer = _load_hf(path.parent, path.name, spec, init, seed)
    elif spec.startswith("hf:"):
        path = Path(spec[3:]).expanduser()
        if not path.is_dir():
            raise ConfigError(f"method.lm: no Hugging Face model folder at {path}")
        identity = {"lm": path.name, "sha256": folder_sha256(path)}
        model, tokenizer = _load_hf(path, None, spec, init, seed)
    else:
        known = ", ".join(sorted(SHIPPED) + sorted(LM_SOURCES))
        raise ConfigError(f"method.lm: unknown LM '{spec}' (a shipped name: {known}; a .gguf path; or hf:PATH)")
    if init == "random":
        identity.update(init="random", seed=str(seed))
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise IntentrecError(f"method.lm={spec}: the tokenizer has neither a pad nor an eos token")
    decoder = model.get_decoder()
    return LoadedLM(decoder, HFTokenizer(tokenizer), identity, int(model.config.hidden_size))


def add_lora(decoder: nn.Module, *, r: int, alpha: int, dropout: float, targets: tuple[str, ...], init: str) -> int:
    """Inject LoRA adapters into ``decoder`` in place and freeze everything else; returns the LoRA
    parameter count. ``init="standard"``: B = 0 (the adapted LM starts as the base LM);
    ``"random"``: both matrices random (every LoRA matrix gets a gradient on the first step)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise IntentrecError("llmgr needs 'peft': pip install 'intentrec[lm]'") from None
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        init_lora_weights=init == "standard",
    )
    try:
        inject_adapter_in_model(config, decoder)
    except ValueError as exc:
        raise ConfigError(f"method.lora_targets {list(targets)}: {exc}") from None
    count = 0
    for name, param in decoder.named_parameters():
        param.requires_grad_("lora_" in name)
        count += param.numel() if param.requires_grad else 0
    if count == 0:
        raise ConfigError(f"method.lora_targets {list(targets)}: no module of the LM was adapted")
    return count


def config_sha256(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
