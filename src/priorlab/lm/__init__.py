"""Tiny character-level language modelling on an offline corpus (the Python standard library).

Shared by the data-repetition and scaling-regime reproductions (arXiv 2305.13230, 2409.15156):
a corpus with a held-out split, a data scheduler that fixes the token budget while varying
repetition, a tiny causal transformer with optional dropout, and a training/measurement loop.
"""

from priorlab.lm.corpus import (VOCABULARY, CharCorpus, TokenSchedule, bits_per_char, decode,
                                encode, held_out_windows, load_stdlib_corpus,
                                repeated_token_budget, stdlib_files)
from priorlab.lm.model import TinyCausalLM, next_token_loss
from priorlab.lm.train import LMRun, mean_token_loss, train_at_budget, train_lm

__all__ = ["VOCABULARY", "CharCorpus", "LMRun", "TinyCausalLM", "TokenSchedule", "bits_per_char",
           "decode", "encode", "held_out_windows", "load_stdlib_corpus", "mean_token_loss",
           "next_token_loss", "repeated_token_budget", "stdlib_files", "train_at_budget",
           "train_lm"]
