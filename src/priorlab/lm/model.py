"""A tiny decoder-only transformer LM, CPU-sized, with an optional dropout.

The block follows google-deepmind/nanodo (nanodo/model.py), the codebase of the scaling study in
arXiv 2409.15156: pre-LayerNorm without biases, learned positional embedding, GELU MLP,
bias-free projections, output logits tied to the token embedding. Dropout (off by default, as
in NanoDO) sits where GPT-2 and T5 put it: on the embeddings, the attention probabilities and
each residual branch; it is the regulariser studied in arXiv 2305.13230.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from priorlab.errors import PriorlabError


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise PriorlabError(f"{name} must be a probability in [0, 1), got {value!r}")


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, width // self.n_heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model, bias=False)
        self.attn = _CausalSelfAttention(d_model, n_heads, dropout)
        self.ln_mlp = nn.LayerNorm(d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff, bias=False), nn.GELU(),
                                 nn.Linear(d_ff, d_model, bias=False))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x)))
        return x + self.drop(self.mlp(self.ln_mlp(x)))


class TinyCausalLM(nn.Module):
    """Decoder-only transformer: ``(batch, length)`` token ids -> ``(batch, length, vocab)`` logits.

    ``dropout`` is one rate for embeddings, attention probabilities and residual branches
    (0 disables it, the NanoDO default; 0.1 is the rate of arXiv 2305.13230).
    """

    def __init__(self, vocab_size: int, *, seq_len: int = 128, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4, d_ff: int | None = None, dropout: float = 0.0):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len), ("d_model", d_model),
                            ("n_layers", n_layers), ("n_heads", n_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PriorlabError(f"{name} must be a positive integer, got {value!r}")
        if d_model % n_heads:
            raise PriorlabError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}); "
                                "change one of them")
        _check_probability("dropout", dropout)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(d_model, bias=False)
        self._init_weights(d_model)

    def _init_weights(self, d_model: int) -> None:
        # NanoDO: embeddings ~ N(0, 1/d) (fan-in variance scaling), dense kernels Xavier-uniform
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=d_model ** -0.5)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise PriorlabError(f"tokens must be an integer tensor of shape (batch, length), got "
                                f"dtype {tokens.dtype} and shape {tuple(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.seq_len:
            raise PriorlabError(f"sequence length {length} exceeds the model's seq_len "
                                f"{self.seq_len}; build the model with seq_len >= {length}")
        positions = torch.arange(length, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        x = self.embedding_dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_out(x) @ self.token_embedding.weight.T


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per token) of ``(B, L, V)`` logits against ``(B, L)``."""
    if logits.shape[:-1] != targets.shape:
        raise PriorlabError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do "
                            "not match: expected (B, L, V) and (B, L)")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
