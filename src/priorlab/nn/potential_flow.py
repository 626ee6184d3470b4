"""Latent traversals as potential flows: K learned potentials u_k(z, t) whose gradients move z.

Song, Keller, Sebe & Welling, "Latent Traversals in Generative Models as Potential Flows",
ICML 2023, arXiv:2304.12944; official code KingJamesSong/PDETraversal (``lib/WavePDE.py``,
``lib/trainer_vae.py``). Each traversal k is the flow of a latent code down a learned,
time-varying potential landscape (Eq. 4 of the paper, one explicit Euler step per time unit):

    z_{t+1} = z_t + grad_z u_k(z_t, t)

Each potential is pushed towards a solution of the wave equation (Eq. 5)

    d^2 u_k / dt^2 - c_k^2 * Laplacian_z u_k = 0,   with learnable wave speed c_k,

through the squared residual at the points of its own rollout, an initial condition (the flow
starts at rest: grad_z u_k(z, 0) = 0) and a term that rewards each step for changing the
generated image (the squared Jacobian-vector product of the decoder along the next step, with a
minus sign). A classifier that sees the two images of consecutive steps must name k, which
makes the K flows distinct and each self-consistent (the objective of Voynov & Babenko, 2020).

:class:`PotentialFlow` holds the K potentials (``traverse``, ``wave_residual``, ``losses``);
:class:`PairClassifier` identifies k from a pair of images or latents; :class:`LinearDirections`
is the linear baseline (K learned unit directions with the same classifier objective).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.functional import jvp

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def _check_latents(z, dim: int, who: str, dtype: torch.dtype | str = "float") -> torch.Tensor:
    return check_tensor(z, "z", who=who, shape=(None, dim), dtype=dtype, finite=True,
                        non_empty=True, hint=f"pass latent codes of shape (batch, {dim}) in the "
                                             "model's dtype")


def _check_index(k, count: int, who: str) -> int:
    return check_number(k, "k", who=who, low=0, high=count - 1, integer=True,
                        hint=f"k names one of the {count} traversals: 0..{count - 1}")


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the (continuous) time, as in transformers and diffusion models."""

    def __init__(self, dim: int):
        super().__init__()
        half = max(dim // 2, 2)
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1)))
        self.out_features = 2 * half

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Potential(nn.Module):
    """One scalar potential u(z, t): the official MLP (tanh on z, GELU on the time embedding,
    fused by addition, tanh head and a bounded tanh output)."""

    def __init__(self, latent_dim: int, hidden: int):
        super().__init__()
        self.space = nn.Linear(latent_dim, hidden)
        self.time_embedding = TimeEmbedding(hidden)
        self.time = nn.Sequential(nn.Linear(self.time_embedding.out_features, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.space(z)) + self.time(self.time_embedding(t))).squeeze(-1)


class PotentialFlow(nn.Module):
    """K potentials u_k(z, t) on a ``latent_dim``-dimensional latent space.

    Args:
        latent_dim: size of the latent code z.
        num_potentials: K, the number of traversals learned together.
        num_steps: length of the training rollout (the official ``num_support_timesteps // 2``,
            5 by default); ``traverse`` may run longer.
        hidden: width of each potential MLP; the official code uses ``latent_dim``.
    """

    def __init__(self, latent_dim: int, num_potentials: int, num_steps: int = 5, hidden: int | None = None):
        super().__init__()
        who = "PotentialFlow"
        self.latent_dim = check_number(latent_dim, "latent_dim", who=who, low=1, integer=True)
        self.num_potentials = check_number(num_potentials, "num_potentials", who=who, low=1, integer=True)
        self.num_steps = check_number(num_steps, "num_steps", who=who, low=2, integer=True,
                                      hint="the training rollout needs two consecutive steps")
        hidden = self.latent_dim if hidden is None else check_number(hidden, "hidden", who=who, low=2,
                                                                      integer=True)
        self.potentials = nn.ModuleList(Potential(self.latent_dim, hidden)
                                        for _ in range(self.num_potentials))
        self.wave_speed = nn.Parameter(torch.ones(self.num_potentials))  # c_k, learned (official init 1)

    def potential(self, z: torch.Tensor, t: float | torch.Tensor, k: int) -> torch.Tensor:
        """u_k(z, t), shape (batch,)."""
        z = _check_latents(z, self.latent_dim, "PotentialFlow.potential", self.wave_speed.dtype)
        k = _check_index(k, self.num_potentials, "PotentialFlow.potential")
        check_tensor(torch.as_tensor(t), "t", who="PotentialFlow.potential", finite=True)
        return self.potentials[k](z, torch.as_tensor(t, dtype=z.dtype).expand(z.shape[0]))

    def velocity(self, z: torch.Tensor, t: float | torch.Tensor, k: int, *,
                 create_graph: bool = False) -> torch.Tensor:
        """grad_z u_k(z, t), shape (batch, latent_dim): the step a latent code takes at time t.

        With ``create_graph=True`` the step stays differentiable (for training); otherwise it is
        a detached tensor, and ``z`` needs no gradient.
        """
        with torch.enable_grad():
            z_in = z if (create_graph and z.requires_grad) else z.detach().requires_grad_()
            u = self.potential(z_in, t, k)
            (grad,) = torch.autograd.grad(u.sum(), z_in, create_graph=create_graph)
        return grad if create_graph else grad.detach()

    def traverse(self, z: torch.Tensor, k: int, steps: int, *, start: int = 0,
                 backward: bool = False) -> torch.Tensor:
        """The path of ``z`` along traversal k: ``steps`` Euler steps from time ``start``.

        Returns the trajectory, shape (steps + 1, batch, latent_dim), beginning with ``z``.
        ``backward=True`` walks the reversed flow, z_{t+1} = z_t - grad u_k(z_t, t) (the
        official code samples both directions in training).
        """
        z = _check_latents(z, self.latent_dim, "PotentialFlow.traverse", self.wave_speed.dtype)
        k = _check_index(k, self.num_potentials, "PotentialFlow.traverse")
        steps = check_number(steps, "steps", who="PotentialFlow.traverse", low=0, integer=True)
        start = check_number(start, "start", who="PotentialFlow.traverse", low=0, integer=True)
        sign = -1.0 if backward else 1.0
        path = [z.detach()]
        for step in range(steps):
            path.append(path[-1] + sign * self.velocity(path[-1], float(start + step), k))
        return torch.stack(path)

    def wave_residual(self, z: torch.Tensor, t: float | torch.Tensor, k: int) -> torch.Tensor:
        """Mean squared residual of the wave equation u_tt - c_k^2 Laplacian_z u at (z, t),
        differentiable in the potential's parameters and in c_k.

        The Laplacian is the exact trace of the Hessian (one extra backward pass per latent
        dimension); the official code uses the Hessian's row sums instead (see the card).
        """
        z = _check_latents(z, self.latent_dim, "PotentialFlow.wave_residual", self.wave_speed.dtype)
        k = _check_index(k, self.num_potentials, "PotentialFlow.wave_residual")
        t = check_number(t, "t", who="PotentialFlow.wave_residual")
        with torch.enable_grad():
            z = z.detach().requires_grad_() if not z.requires_grad else z
            t = torch.full((z.shape[0],), float(t), dtype=z.dtype, requires_grad=True)
            u = self.potentials[k](z, t)
            u_t, u_z = torch.autograd.grad(u.sum(), (t, z), create_graph=True)
            (u_tt,) = torch.autograd.grad(u_t.sum(), t, create_graph=True)
            laplacian = sum(torch.autograd.grad(u_z[:, i].sum(), z, create_graph=True)[0][:, i]
                            for i in range(self.latent_dim))
            residual = u_tt - self.wave_speed[k] ** 2 * laplacian
        return residual.square().mean()

    def initial_condition(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Mean squared speed at t = 0: the flow starts at rest, grad_z u_k(z, 0) = 0."""
        return self.velocity(z, 0.0, k, create_graph=True).square().mean()

    def losses(self, z: torch.Tensor, k: int, start: int, decoder) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One training rollout of traversal k from ``z`` (the official ``WavePDE.forward``).

        Rolls ``num_steps`` steps; at each step adds the wave residual; at step ``start`` keeps
        the pair (z_start + v, z_start + v + v'), with v' the next step, and the squared
        decoder JVP along v'. Returns ``(latent1, latent2, terms)`` with terms ``wave``,
        ``initial`` and ``jvp``; the official flow loss is ``initial + wave - jvp``.
        """
        z = _check_latents(z, self.latent_dim, "PotentialFlow.losses", self.wave_speed.dtype)
        k = _check_index(k, self.num_potentials, "PotentialFlow.losses")
        start = check_number(start, "start", who="PotentialFlow.losses", low=0, high=self.num_steps - 2,
                             integer=True, hint="the pair needs the step after start inside the rollout")
        if not callable(decoder):
            raise PriorlabError(f"PotentialFlow.losses: decoder must map latents to images, got {decoder!r}")
        wave = z.new_zeros(())
        latent1 = latent2 = jvp_term = None
        current = z
        for step in range(self.num_steps):
            # the rollout's points are collocation points of the PDE: the residual shapes u_k
            # there but does not pull the points themselves (see the card's deviations)
            wave = wave + self.wave_residual(current.detach(), step, k)
            move = self.velocity(current, float(step), k, create_graph=True)
            if step == start:
                latent1 = current + move
                ahead = self.velocity(latent1, float(step + 1), k, create_graph=True)
                latent2 = latent1 + ahead
                _, change = jvp(decoder, latent1, v=ahead, create_graph=True)
                jvp_term = change.square().mean()
            current = current + move
        terms = {"wave": wave / self.num_steps, "initial": self.initial_condition(z, k), "jvp": jvp_term}
        return latent1, latent2, terms


class LinearDirections(nn.Module):
    """The linear baseline (Voynov & Babenko, ICML 2020): traversal k moves every code along
    the same unit direction a_k / |a_k| by ``step_size`` per step."""

    def __init__(self, latent_dim: int, num_directions: int, step_size: float = 0.5):
        super().__init__()
        who = "LinearDirections"
        self.latent_dim = check_number(latent_dim, "latent_dim", who=who, low=1, integer=True)
        self.num_directions = check_number(num_directions, "num_directions", who=who, low=1, integer=True)
        self.step_size = check_number(step_size, "step_size", who=who, low=0, low_open=True)
        self.directions = nn.Parameter(torch.randn(self.num_directions, self.latent_dim))

    def unit(self, k: int) -> torch.Tensor:
        k = _check_index(k, self.num_directions, "LinearDirections")
        return self.directions[k] / self.directions[k].norm().clamp_min(1e-12)

    def traverse(self, z: torch.Tensor, k: int, steps: int, *, start: int = 0,
                 backward: bool = False) -> torch.Tensor:
        """Same contract as :meth:`PotentialFlow.traverse`; ``start`` has no effect (the field
        is constant in time)."""
        z = _check_latents(z, self.latent_dim, "LinearDirections.traverse")
        steps = check_number(steps, "steps", who="LinearDirections.traverse", low=0, integer=True)
        move = (-1.0 if backward else 1.0) * self.step_size * self.unit(k).detach()
        offsets = torch.arange(steps + 1, dtype=z.dtype)[:, None, None] * move
        return z.detach()[None] + offsets

    def pair(self, z: torch.Tensor, k: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pair at ``start``: (z + (start+1) s a_k, z + (start+2) s a_k)."""
        z = _check_latents(z, self.latent_dim, "LinearDirections.pair")
        move = self.step_size * self.unit(k)
        latent1 = z + (start + 1) * move
        return latent1, latent1 + move


class PairClassifier(nn.Module):
    """Names the traversal k that turned the first input into the second.

    With ``latent_dim`` set it reads a pair of latent codes (an MLP on the concatenation);
    otherwise a pair of images with ``in_channels`` channels each (a small CNN on the
    channel-concatenation, any image size >= 4), the official reconstructor's input layout.
    """

    def __init__(self, num_classes: int, *, in_channels: int = 1, latent_dim: int | None = None,
                 width: int = 32):
        super().__init__()
        who = "PairClassifier"
        self.num_classes = check_number(num_classes, "num_classes", who=who, low=2, integer=True)
        width = check_number(width, "width", who=who, low=1, integer=True)
        self.latent_dim = None if latent_dim is None else check_number(latent_dim, "latent_dim", who=who,
                                                                       low=1, integer=True)
        if self.latent_dim is not None:
            self.net = nn.Sequential(nn.Linear(2 * self.latent_dim, width), nn.ReLU(),
                                     nn.Linear(width, width), nn.ReLU(), nn.Linear(width, self.num_classes))
        else:
            channels = check_number(in_channels, "in_channels", who=who, low=1, integer=True)
            self.net = nn.Sequential(
                nn.Conv2d(2 * channels, width, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                # a 4x4 pooled map keeps where things moved (a global average would not)
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * width, self.num_classes))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        ndim = 2 if self.latent_dim is not None else 4
        for name, x in (("first", first), ("second", second)):
            check_tensor(x, name, who="PairClassifier", ndim=ndim, dtype="float",
                         hint="latent pairs need latent_dim=..." if ndim == 4 else "")
        if first.shape != second.shape:
            raise PriorlabError(f"PairClassifier: the pair must have one shape, got {tuple(first.shape)} "
                                f"and {tuple(second.shape)}")
        return self.net(torch.cat([first, second], dim=1))
