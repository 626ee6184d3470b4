"""DINO's projection head and an encoder + head model, as in the random-teacher paper.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
arXiv:2104.14294; used unchanged by Sarnthein et al., "Random Teachers are Good Teachers",
ICML 2023, arXiv:2302.12091 (official code: github.com/safelix/dinopl, ``DINOHead`` and
``L2Bottleneck``). The head is an MLP (Linear + GELU per hidden layer), a linear map with bias to
an l2-normalised bottleneck, and a bias-free linear map whose weight rows are l2-normalised
(the ``-/lb/fn/wn/l/-`` configuration)::

    h = MLP(x);  b = normalize(W1 h + c1);  logits = normalize_rows(W2) b
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PriorlabError(f"{name} must be a positive integer, got {value!r}")
    return value


class DinoHead(nn.Module):
    """MLP -> l2-normalised bottleneck -> weight-normalised linear to ``out_dim`` logits."""

    def __init__(self, embed_dim: int, out_dim: int, hidden_dims: Sequence[int] = (2048, 2048),
                 bottleneck_dim: int = 256):
        super().__init__()
        _positive_int("embed_dim", embed_dim)
        _positive_int("out_dim", out_dim)
        _positive_int("bottleneck_dim", bottleneck_dim)
        dims = [embed_dim] + [_positive_int("hidden_dims entry", h) for h in hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(dims):
            layers += [nn.Linear(d_in, d_out), nn.GELU()]
        self.embed_dim = embed_dim
        self.mlp = nn.Sequential(*layers)
        self.to_bottleneck = nn.Linear(dims[-1], bottleneck_dim)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.embed_dim:
            raise PriorlabError(f"DinoHead expects (..., {self.embed_dim}) embeddings, got shape "
                                f"{tuple(x.shape)}; build it with embed_dim={x.shape[-1]}")
        bottleneck = F.normalize(self.to_bottleneck(self.mlp(x)), dim=-1)
        return F.linear(bottleneck, F.normalize(self.last_layer.weight, dim=-1))


class DinoModel(nn.Module):
    """``encoder`` then ``head``; ``forward`` gives logits, ``embed`` the encoder's features."""

    def __init__(self, encoder: nn.Module, head: DinoHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
