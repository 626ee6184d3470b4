"""The LLM family's shared machinery: the one pretrained-LLM loader (SmolLM2-135M-Instruct offline),
tiny Llama models for tests, perplexity."""

from priorlab.llm.evaluate import perplexity
from priorlab.llm.loader import SMOLLM2, cache_dir, load_pretrained, tiny_llama

__all__ = ["SMOLLM2", "cache_dir", "load_pretrained", "perplexity", "tiny_llama"]
