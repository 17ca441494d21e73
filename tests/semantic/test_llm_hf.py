"""transformers backend on a tiny random Llama model built in tmp_path (no downloads)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from intentrec.semantic.llm import get_llm, resolve_llm_identity
from intentrec.semantic.llm.base import DecodingConfig

WORDS = [
    "lipstick",
    "mascara",
    "shampoo",
    "conditioner",
    "perfume",
    "lotion",
    "brush",
    "nail",
    "polish",
    "cream",
    "soap",
    "user",
    "items",
    "clicked",
    "answer",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tokens = list(dict.fromkeys(specials + WORDS + [":", ".", "system", "user", "assistant"]))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


PROMPTS = [
    [{"role": "system", "content": "answer"}, {"role": "user", "content": "lipstick mascara"}],
    [{"role": "user", "content": "shampoo conditioner perfume lotion brush nail polish"}],
    [{"role": "user", "content": "soap"}],
]


def test_generates_in_order_with_token_counts(tiny_model):
    llm = get_llm(f"hf:{tiny_model}", batch_size=2)
    decoding = DecodingConfig(max_tokens=5, repeat_penalty=1.0)
    seen = []
    gens = llm.generate(PROMPTS, decoding, on_result=lambda i, g: seen.append(i))
    assert len(gens) == 3 and sorted(seen) == [0, 1, 2]
    rendered = [llm.render(p) for p in PROMPTS]
    expected_prompt_tokens = [len(llm.tokenizer(t, add_special_tokens=False).input_ids) for t in rendered]
    assert [g.prompt_tokens for g in gens] == expected_prompt_tokens
    assert all(1 <= g.completion_tokens <= 5 for g in gens)
    assert all(isinstance(g.text, str) for g in gens)


def test_greedy_is_deterministic_and_independent_of_batching(tiny_model):
    decoding = DecodingConfig(max_tokens=6, repeat_penalty=1.0)
    batched = get_llm(f"hf:{tiny_model}", batch_size=3).generate(PROMPTS, decoding)
    again = get_llm(f"hf:{tiny_model}", batch_size=3).generate(PROMPTS, decoding)
    single = get_llm(f"hf:{tiny_model}", batch_size=1).generate(PROMPTS, decoding)
    assert [g.text for g in batched] == [g.text for g in again]
    assert [(g.text, g.completion_tokens) for g in batched] == [(g.text, g.completion_tokens) for g in single]


def test_identity_hashes_the_folder(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path))
    ident = resolve_llm_identity(f"hf:{tiny_model}")
    assert ident["backend"] == "transformers" and len(ident["model_sha256"]) == 64
    assert resolve_llm_identity(f"hf:{tiny_model}") == ident
    assert get_llm(f"hf:{tiny_model}").identity() == ident
