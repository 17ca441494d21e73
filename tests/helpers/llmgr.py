"""A tiny random causal LM for LLMGR tests, built from a config in code (no download, no files).

Importing this module registers it as ``method.lm=test-tiny``: a 2-layer Llama (hidden 32) with a
byte tokenizer (id = byte + 3; 1 opens a prompt). Its weights come from a fixed seed, independent of
the global RNG, so two builds are the same "pretrained" LM (as a real checkpoint would be).
"""

from __future__ import annotations

import torch

from intentrec.models.methods.llmgr_lm import LM_SOURCES, LoadedLM, random_like, register_lm_source

TINY_LM = "test-tiny"
TINY_HIDDEN = 32
#: method settings that make LLMGR cheap in shared tests (every LoRA matrix gets a gradient at once)
TINY_LLMGR = {"lm": TINY_LM, "lora_init": "random", "cuda_dtype": "float32"}


class ByteTokenizer:
    def encode(self, texts: list[str], *, first: bool = False) -> list[list[int]]:
        return [([1] if first else []) + [b + 3 for b in text.encode("utf-8")] for text in texts]


def tiny_lm(init: str = "pretrained", seed: int = 0) -> LoadedLM:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=259,
        hidden_size=TINY_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    identity = {"lm": TINY_LM, "sha256": "built-in-test-config"}
    if init == "random":
        model = random_like(model, seed)
        identity.update(init="random", seed=str(seed))
    return LoadedLM(model.get_decoder(), ByteTokenizer(), identity, TINY_HIDDEN)


if TINY_LM not in LM_SOURCES:
    register_lm_source(TINY_LM, tiny_lm)
