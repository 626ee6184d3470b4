"""Fitting a coordinate network to samples of a field (an image, an SDF) and rendering it."""

from __future__ import annotations

import torch
from torch import nn

from priorlab.errors import did_you_mean
from priorlab.fields.coords import grid_coords
from priorlab.validation import check_number, check_tensor

_LOSSES = {"mse": nn.functional.mse_loss, "l1": nn.functional.l1_loss}


def fit_field(model: nn.Module, coords: torch.Tensor, targets: torch.Tensor, steps: int,
              lr: float = 1e-4, batch_size: int | None = None, loss: str = "mse",
              generator: torch.Generator | None = None) -> list[float]:
    """Train ``model`` (coords (N, D) -> values (N, K)) on the samples with Adam for ``steps``
    steps: full batch, or ``batch_size`` random samples per step. Returns the loss per step.
    SIREN's paper fits images with lr 1e-4, full batch."""
    who = "fit_field"
    check_tensor(coords, "coords", who=who, ndim=2, dtype="float", non_empty=True, finite=True)
    check_tensor(targets, "targets", who=who, shape=(coords.shape[0], None), dtype="float", finite=True,
                 hint="one target row per coordinate row")
    steps = check_number(steps, "steps", who=who, low=1, integer=True)
    lr = check_number(lr, "lr", who=who, low=0.0, low_open=True)
    if batch_size is not None:
        batch_size = check_number(batch_size, "batch_size", who=who, low=1, integer=True)
    if loss not in _LOSSES:
        raise did_you_mean(loss, _LOSSES, "loss")
    loss_fn = _LOSSES[loss]
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        if batch_size is None or batch_size >= len(coords):
            x, y = coords, targets
        else:
            pick = torch.randint(len(coords), (batch_size,), generator=generator)
            x, y = coords[pick], targets[pick]
        value = loss_fn(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        history.append(float(value.detach()))
    return history


@torch.no_grad()
def render_field(model: nn.Module, height: int, width: int, chunk: int = 65536) -> torch.Tensor:
    """Evaluate a 2-D field on the pixel-centre grid: an image (K, height, width)."""
    coords = grid_coords(height, width)
    chunk = check_number(chunk, "chunk", who="render_field", low=1, integer=True)
    values = torch.cat([model(coords[i:i + chunk]) for i in range(0, len(coords), chunk)])
    return values.T.reshape(-1, height, width)
