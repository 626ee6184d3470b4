"""DINO's projection head and an encoder + head model, as in the random-teacher paper.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
arXiv:2104.14294; used by Sarnthein et al., "Random Teachers are Good Teachers", ICML 2023,
arXiv:2302.12091 (official code: github.com/safelix/dinopl, ``DINOHead`` in ``dinopl/core.py``,
``L2Bottleneck`` in ``dinopl/modules/l2bottleneck.py``). The head is an MLP (Linear + GELU per
hidden layer), a linear map with bias to an l2-normalised bottleneck, and a bias-free linear map
to the logits (the ``-/lb/fn/wn/l/-`` configuration)::

    h = MLP(x);  b = normalize(W1 h + c1);  logits = W2 b

Two details follow the current official code rather than the DINO paper:

* ``init="trunc_normal"`` (the official ``--head_init_method`` default, ``configuration.py`` at
  commit 2fbaf231; ``DINOHead(init_method='trunc_normal')`` in ``core.py`` at d56e80a1): every
  Linear of the head gets weights from a normal with std 0.02 truncated to the absolute interval
  [-2, 2] (torch's / DINO's ``trunc_normal_`` defaults, so at std 0.02 the cut never bites) and
  zero biases. ``init="default"`` is PyTorch's uniform(+-1/sqrt(fan_in)) initialisation.
* ``weight_norm_last=False``: since ``dinopl/modules/linear.py`` appeared (commit fe8f1b59, still
  so at e8c392bd) the official ``Linear.forward`` receives the row-normalised weight but
  multiplies by the raw ``self.weight``, so the ``wn`` of the configuration has no effect.
  ``weight_norm_last=True`` gives DINO's original unit-row last layer (logits are cosines).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError

HEAD_INITS = ("trunc_normal", "default")
TRUNC_NORMAL_STD = 0.02


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PriorlabError(f"{name} must be a positive integer, got {value!r}")
    return value


class DinoHead(nn.Module):
    """MLP -> l2-normalised bottleneck -> bias-free linear to ``out_dim`` logits."""

    def __init__(self, embed_dim: int, out_dim: int, hidden_dims: Sequence[int] = (2048, 2048),
                 bottleneck_dim: int = 256, init: str = "trunc_normal",
                 weight_norm_last: bool = False):
        super().__init__()
        _positive_int("embed_dim", embed_dim)
        _positive_int("out_dim", out_dim)
        _positive_int("bottleneck_dim", bottleneck_dim)
        if init not in HEAD_INITS:
            raise PriorlabError(f"init must be one of {', '.join(HEAD_INITS)}, got {init!r}")
        if not isinstance(weight_norm_last, bool):
            raise PriorlabError(f"weight_norm_last must be True or False, got {weight_norm_last!r}")
        dims = [embed_dim] + [_positive_int("hidden_dims entry", h) for h in hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(dims):
            layers += [nn.Linear(d_in, d_out), nn.GELU()]
        self.embed_dim = embed_dim
        self.weight_norm_last = weight_norm_last
        self.mlp = nn.Sequential(*layers)
        self.to_bottleneck = nn.Linear(dims[-1], bottleneck_dim)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        if init == "trunc_normal":
            self._trunc_normal_init()

    def _trunc_normal_init(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=TRUNC_NORMAL_STD)  # cut at +-2, absolute
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.embed_dim:
            raise PriorlabError(f"DinoHead expects (..., {self.embed_dim}) embeddings, got shape "
                                f"{tuple(x.shape)}; build it with embed_dim={x.shape[-1]}")
        bottleneck = F.normalize(self.to_bottleneck(self.mlp(x)), dim=-1)
        weight = self.last_layer.weight
        if self.weight_norm_last:
            weight = F.normalize(weight, dim=-1)
        return F.linear(bottleneck, weight)


class DinoModel(nn.Module):
    """``encoder`` then ``head``; ``forward`` gives logits, ``embed`` the encoder's features."""

    def __init__(self, encoder: nn.Module, head: DinoHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
