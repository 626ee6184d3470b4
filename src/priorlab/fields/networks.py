"""Coordinate networks: random Fourier features, SIREN and a plain coordinate MLP.

- Fourier features: Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions
  in Low Dimensional Domains", NeurIPS 2020, arXiv:2006.10739: ``gamma(v) = [cos 2 pi B v,
  sin 2 pi B v]`` with ``B ~ N(0, scale^2)`` fixed.
- SIREN: Sitzmann et al., "Implicit Neural Representations with Periodic Activation Functions",
  NeurIPS 2020, arXiv:2006.09661: ``sin(w0 (W x + b))`` layers; the first layer's weights are
  uniform in ``±1/in``, the others in ``±sqrt(6/in)/w0`` (official ``siren`` code), so the
  pre-activations stay unit-scale through depth.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def _size(value, name: str, who: str) -> int:
    return check_number(value, name, who=who, low=1, integer=True)


class FourierFeatures(nn.Module):
    """``x (..., in_dim) -> [cos 2 pi B x, sin 2 pi B x] (..., 2 * n_features)``; ``B`` is a
    fixed buffer drawn from ``N(0, scale^2)`` with ``seed`` (so it is saved in state_dict)."""

    def __init__(self, in_dim: int, n_features: int = 64, scale: float = 10.0, seed: int = 0):
        super().__init__()
        who = "FourierFeatures"
        self.in_dim = _size(in_dim, "in_dim", who)
        self.n_features = _size(n_features, "n_features", who)
        scale = check_number(scale, "scale", who=who, low=0.0, low_open=True)
        generator = torch.Generator().manual_seed(int(seed))
        self.register_buffer("B", torch.randn(self.n_features, self.in_dim, generator=generator) * scale)

    @property
    def out_dim(self) -> int:
        return 2 * self.n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", who="FourierFeatures", dtype="float")
        if x.shape[-1] != self.in_dim:
            raise PriorlabError(f"FourierFeatures: x must end in {self.in_dim} coordinates, "
                                f"got shape {tuple(x.shape)}")
        angles = 2 * math.pi * x @ self.B.T
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class SineLayer(nn.Module):
    """``sin(w0 (W x + b))`` with SIREN's initialisation (``first`` for the input layer)."""

    def __init__(self, in_dim: int, out_dim: int, w0: float = 30.0, first: bool = False):
        super().__init__()
        self.w0 = check_number(w0, "w0", who="SineLayer", low=0.0, low_open=True)
        self.linear = nn.Linear(in_dim, out_dim)
        bound = 1.0 / in_dim if first else math.sqrt(6.0 / in_dim) / self.w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class Siren(nn.Module):
    """A SIREN: ``depth`` sine layers of width ``hidden`` and a linear output layer.

    ``w0`` is the first layer's frequency (30 in the paper); hidden layers use ``w0_hidden``
    (also 30 in the official code, whose init compensates for it)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, depth: int = 3,
                 w0: float = 30.0, w0_hidden: float = 30.0):
        super().__init__()
        who = "Siren"
        in_dim, out_dim = _size(in_dim, "in_dim", who), _size(out_dim, "out_dim", who)
        hidden, depth = _size(hidden, "hidden", who), _size(depth, "depth", who)
        layers = [SineLayer(in_dim, hidden, w0, first=True)]
        layers += [SineLayer(hidden, hidden, w0_hidden) for _ in range(depth - 1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, out_dim)
        bound = math.sqrt(6.0 / hidden) / w0_hidden
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        check_tensor(coords, "coords", who="Siren", dtype="float")
        if coords.shape[-1] != self.in_dim:
            raise PriorlabError(f"Siren: coords must end in {self.in_dim} coordinates, "
                                f"got shape {tuple(coords.shape)}")
        return self.head(self.body(coords))


def mlp(in_dim: int, out_dim: int, hidden: int | list[int] = 256, depth: int = 4) -> nn.Sequential:
    """A ReLU MLP: ``depth`` hidden layers of width ``hidden`` (or the widths listed), linear out."""
    widths = list(hidden) if isinstance(hidden, (list, tuple)) else [hidden] * depth
    if not widths:
        raise PriorlabError("mlp: give at least one hidden layer")
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, _size(width, "hidden", "mlp")), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, _size(out_dim, "out_dim", "mlp")))


class CoordinateMLP(nn.Module):
    """A ReLU coordinate MLP, optionally behind an encoding (e.g. :class:`FourierFeatures`)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, depth: int = 3,
                 encoding: nn.Module | None = None):
        super().__init__()
        self.in_dim = _size(in_dim, "in_dim", "CoordinateMLP")
        self.encoding = encoding
        encoded = getattr(encoding, "out_dim", None) if encoding is not None else self.in_dim
        if encoded is None:
            raise PriorlabError("CoordinateMLP: the encoding must say its out_dim (an int attribute)")
        self.net = mlp(encoded, out_dim, hidden, depth)
        self.out_dim = out_dim

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        check_tensor(coords, "coords", who="CoordinateMLP", dtype="float")
        if coords.shape[-1] != self.in_dim:
            raise PriorlabError(f"CoordinateMLP: coords must end in {self.in_dim} coordinates, "
                                f"got shape {tuple(coords.shape)}")
        return self.net(coords if self.encoding is None else self.encoding(coords))
