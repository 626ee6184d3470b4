"""The LLM family's shared machinery: the one pretrained-LLM loader (SmolLM2-135M-Instruct offline),
tiny Llama models for tests, offline English text split by document, perplexity."""

from priorlab.llm.evaluate import perplexity
from priorlab.llm.loader import SMOLLM2, cache_dir, load_pretrained, tiny_llama
from priorlab.llm.text import SPLITS, documentation_tokens, documentation_topics

__all__ = ["SMOLLM2", "SPLITS", "cache_dir", "documentation_tokens", "documentation_topics",
           "load_pretrained", "perplexity", "tiny_llama"]
