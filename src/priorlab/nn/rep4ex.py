"""Rep4Ex modules: the autoencoder trained under linear invariance, and the control-function stage.

Saengkyongam et al., "Identifying Representations for Intervention Extrapolation", ICLR 2024
(arXiv 2310.04295). Stage 1 (Sec. 5): minimise ``E||X - eta(phi(X))||^2 + lambda * MMR(phi)``
over encoder ``phi`` and decoder ``eta`` (see :mod:`priorlab.functional.rep4ex` for MMR).
Stage 2 (Sec. 3 and 5): regress ``phi(X)`` on ``A`` by OLS, take the residuals ``V_hat`` as
control variables, fit the additive model ``Y ~ nu(phi(X)) + lam(V_hat)`` and average
``nu(gamma + M a* + V_hat_i) + lam(V_hat_i)`` over the training residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from priorlab.functional.rep4ex import interventional_mean, linear_fit, linear_invariance_penalty
from priorlab.models import mlp
from priorlab.validation import check_number, check_tensor


class Rep4ExAutoencoder(nn.Module):
    """MLP encoder ``phi`` (input -> latent) and decoder ``eta``; ``forward(x) -> (latent, recon)``."""

    def __init__(self, input_dim: int, latent_dim: int, hidden: int = 64, depth: int = 2):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("latent_dim", latent_dim),
                            ("hidden", hidden), ("depth", depth)):
            check_number(value, name, who="Rep4ExAutoencoder", low=1, integer=True)
        self.encoder = mlp(input_dim, [hidden] * depth, latent_dim, activation=nn.LeakyReLU)
        self.decoder = mlp(latent_dim, [hidden] * depth, input_dim, activation=nn.LeakyReLU)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.encoder(x)
        return latent, self.decoder(latent)


class Rep4ExLoss:
    """``(outputs, (x, action)) -> mse(recon, x) + strength * MMR(latent, action)``.

    ``outputs`` is what :class:`Rep4ExAutoencoder` returns. ``strength = 0`` is the plain
    autoencoder. The two terms of the last call are kept in ``last_terms`` for logging.
    """

    def __init__(self, strength: float = 1.0, bandwidth: float | None = None):
        self.strength = check_number(strength, "strength", who="Rep4ExLoss", low=0)
        self.bandwidth = None if bandwidth is None else check_number(
            bandwidth, "bandwidth", who="Rep4ExLoss", low=0, low_open=True)
        self.last_terms: dict[str, float] = {}

    def __call__(self, outputs, targets) -> torch.Tensor:
        latent, recon = outputs
        x, action = targets
        check_tensor(x, "x", who="Rep4ExLoss", shape=tuple(recon.shape), dtype="float")
        reconstruction = (recon - x).square().mean()
        if self.strength == 0:
            self.last_terms = {"reconstruction": reconstruction.item()}
            return reconstruction
        penalty = linear_invariance_penalty(latent, action, bandwidth=self.bandwidth)
        self.last_terms = {"reconstruction": reconstruction.item(), "invariance": penalty.item()}
        return reconstruction + self.strength * penalty


def train_autoencoder(model: Rep4ExAutoencoder, x: torch.Tensor, action: torch.Tensor, *,
                      strength: float, epochs: int, batch_size: int = 256, lr: float = 1e-3,
                      generator: torch.Generator | None = None) -> list[float]:
    """Adam on minibatches of ``(x, action)``; returns the per-epoch mean total loss."""
    check_tensor(x, "x", who="train_autoencoder", ndim=2, dtype="float", finite=True)
    check_tensor(action, "action", who="train_autoencoder", shape=(x.shape[0], None), dtype="float")
    loss_fn = Rep4ExLoss(strength)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(check_number(epochs, "epochs", who="train_autoencoder", low=1, integer=True)):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) <= action.shape[1] + 1:  # too few rows for the OLS inside MMR
                continue
            loss = loss_fn(model(x[idx]), (x[idx], action[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
    return history


class AdditiveOutcome(nn.Module):
    """``nu(latent) + lam(residual)``: the additive control-function regression of ``Y``."""

    def __init__(self, latent_dim: int, hidden: int = 32):
        super().__init__()
        self.nu = mlp(latent_dim, [hidden, hidden], 1)
        self.lam = mlp(latent_dim, [hidden, hidden], 1)

    def forward(self, latent: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return (self.nu(latent) + self.lam(residual)).squeeze(-1)


@dataclass
class ControlFunction:
    """A fitted stage 2; ``predict(a*)`` estimates ``E[Y | do(A = a*)]`` (in ``Y``'s units)."""

    outcome: AdditiveOutcome
    intercept: torch.Tensor
    coef: torch.Tensor
    residual: torch.Tensor

    @torch.no_grad()
    def predict(self, new_action: torch.Tensor) -> torch.Tensor:
        return interventional_mean(self.outcome, self.intercept, self.coef, self.residual, new_action)


def fit_control_function(latent: torch.Tensor, action: torch.Tensor, outcome: torch.Tensor, *,
                         steps: int = 800, lr: float = 5e-3, hidden: int = 32) -> ControlFunction:
    """Stage 2 on a fixed representation (full-batch Adam on the squared error)."""
    check_tensor(outcome, "outcome", who="fit_control_function", shape=(latent.shape[0],),
                 dtype="float", finite=True)
    # standardise (an affine map, which the method is invariant to) so one network setting
    # fits every encoder's output scale
    latent = latent.detach()
    latent = (latent - latent.mean(dim=0)) / latent.std(dim=0).clamp_min(1e-8)
    intercept, coef, residual = linear_fit(latent, action)
    model = AdditiveOutcome(latent.shape[1], hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(check_number(steps, "steps", who="fit_control_function", low=1, integer=True)):
        loss = (model(latent, residual) - outcome).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return ControlFunction(model.eval(), intercept, coef, residual)
