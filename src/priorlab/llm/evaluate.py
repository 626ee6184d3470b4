"""Language-model evaluation shared by the LLM papers: perplexity over non-overlapping blocks."""

from __future__ import annotations

import math

import torch

from priorlab.validation import check_number, check_tensor


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor, block_size: int = 256, batch_size: int = 4) -> float:
    """``exp`` of the mean next-token cross-entropy of a causal LM over ``token_ids`` (1-D), cut
    into non-overlapping blocks of ``block_size`` tokens (the last partial block is dropped; each
    block predicts its tokens 2..n, as in Wanda's and SparseGPT's WikiText evaluation)."""
    who = "perplexity"
    check_tensor(token_ids, "token_ids", who=who, ndim=1, dtype="integer")
    block_size = check_number(block_size, "block_size", who=who, low=2, integer=True)
    batch_size = check_number(batch_size, "batch_size", who=who, low=1, integer=True)
    n_blocks = len(token_ids) // block_size
    if n_blocks == 0:
        check_tensor(token_ids[:0], "token_ids", who=who, non_empty=True,
                     hint=f"give at least block_size={block_size} tokens, got {len(token_ids)}")
    blocks = token_ids[:n_blocks * block_size].view(n_blocks, block_size)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, n_blocks, batch_size):
        batch = blocks[i:i + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += batch[:, 1:].numel()
    return math.exp(total / count)
