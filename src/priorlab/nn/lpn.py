"""Learned proximal networks: a network that is exactly the proximal operator of some prior.

Fang, Buchanan & Sulam, "What's in a Prior? Learned Proximal Networks for Inverse Problems",
ICLR 2024, arXiv:2310.14344. An LPN is ``f = grad psi`` with ``psi`` an input-convex neural
network (ICNN). A gradient of a convex function is the proximal operator of some (possibly
non-convex) function ``phi`` (Gribonval & Nikolova), so ``f(y) = prox_phi(y)`` exactly, and the
prior's value can be read off by inverting ``f`` (paper, Prop. 3.2 / eq. 3.3):

    phi(x) = <y, x> - ||x||^2 / 2 - psi(y),   where  f(y) = x.

``y = f^{-1}(x)`` is the minimiser of the convex function ``psi(y) - <x, y>``, found here by
gradient descent as the official code does (``lpn/utils/invert_model/invert_cvx_gd.py``).

The ICNN follows the official networks (``exps/laplacian/network.py``, ``lpn/networks``): a
z-path whose weights are clamped to be non-negative after every optimiser step
(:meth:`ICNN.clip_weights`), an unconstrained x-path (skip connections from the input) and
softplus activations (convex and non-decreasing), plus ``alpha ||x||^2 / 2`` which makes ``psi``
strongly convex (``f`` then is injective and the inversion well posed).
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter, StepContext, unwrap_model
from priorlab.validation import check_number, check_tensor


class ICNN(nn.Module):
    """Input-convex scalar potential ``psi: R^dim -> R`` for inputs of shape ``(n, dim)``.

    ``z_1 = s(A_0 x + b_0)``, ``z_{k+1} = s(W_k z_k + A_k x + b_k)`` with ``W_k >= 0``,
    ``psi(x) = w^T z_L + a^T x + alpha ||x||^2 / 2``, ``w >= 0``, ``s`` = softplus(beta).
    Convex because a non-negative combination of convex functions composed with a convex
    non-decreasing ``s`` stays convex. The clamp on ``W_k`` and ``w`` is applied by
    :meth:`clip_weights` (call it after each optimiser step, as the official code does).
    """

    def __init__(self, dim: int, hidden: int = 50, layers: int = 4, beta: float = 10.0,
                 alpha: float = 0.0):
        super().__init__()
        who = "ICNN"
        self.dim = check_number(dim, "dim", who=who, low=1, integer=True)
        hidden = check_number(hidden, "hidden", who=who, low=1, integer=True)
        layers = check_number(layers, "layers", who=who, low=0, integer=True)
        self.beta = check_number(beta, "beta", who=who, low=0, low_open=True,
                                 hint="softplus sharpness, e.g. beta=10")
        self.alpha = check_number(alpha, "alpha", who=who, low=0,
                                  hint="alpha >= 0 is the strong-convexity weight")
        self.input_layer = nn.Linear(self.dim, hidden)
        self.z_layers = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(layers))
        self.x_layers = nn.ModuleList(nn.Linear(self.dim, hidden) for _ in range(layers))
        self.z_out = nn.Linear(hidden, 1, bias=False)
        # no bias: a constant in psi changes neither f nor phi (and would never get a gradient)
        self.x_out = nn.Linear(self.dim, 1, bias=False)
        self.act = nn.Softplus(beta=self.beta)
        self.clip_weights()  # start inside the convex set

    def constrained_weights(self) -> list[torch.Tensor]:
        """The z-path weights that must stay non-negative for ``psi`` to be convex."""
        return [layer.weight for layer in self.z_layers] + [self.z_out.weight]

    @torch.no_grad()
    def clip_weights(self) -> None:
        """Project the z-path weights onto ``>= 0`` (keeps ``psi`` convex)."""
        for weight in self.constrained_weights():
            weight.clamp_(min=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", who="ICNN", shape=(None, self.dim), dtype="float", non_empty=True)
        z = self.act(self.input_layer(x))
        for z_layer, x_layer in zip(self.z_layers, self.x_layers):
            z = self.act(z_layer(z) + x_layer(x))
        value = self.z_out(z) + self.x_out(x)
        return value.squeeze(1) + 0.5 * self.alpha * x.pow(2).sum(1)


class LearnedProximalNetwork(nn.Module):
    """``f(y) = grad psi(y)``: the proximal operator of the learned prior ``phi``.

    ``forward``/``prox`` take ``(n, dim)`` tensors. With grad mode on, the gradient is built with
    ``create_graph=True`` so a loss can be backpropagated to the ICNN's parameters; call
    :meth:`clip_weights` after each optimiser step. ``prior_value(x)`` evaluates ``phi(x)`` up to
    the additive constant that any prox leaves undetermined.
    """

    def __init__(self, dim: int, hidden: int = 50, layers: int = 4, beta: float = 10.0,
                 alpha: float = 0.0):
        super().__init__()
        self.potential = ICNN(dim, hidden=hidden, layers=layers, beta=beta, alpha=alpha)

    @property
    def dim(self) -> int:
        return self.potential.dim

    def clip_weights(self) -> None:
        self.potential.clip_weights()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.prox(y)

    def prox(self, y: torch.Tensor) -> torch.Tensor:
        """``prox_phi(y) = grad psi(y)``, shape ``(n, dim)``."""
        check_tensor(y, "y", who="LPN.prox", shape=(None, self.dim), dtype="float",
                     finite=True, non_empty=True)
        # keep the graph (to train through f) unless the caller is under torch.no_grad()
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            point = y if y.requires_grad else y.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.potential(point).sum(), point,
                                          create_graph=create_graph)
        return grad

    def invert(self, x: torch.Tensor, *, steps: int = 2000, lr: float = 1e-2) -> torch.Tensor:
        """``y`` with ``f(y) = x``: minimises the convex ``psi(y) - <x, y>`` with Adam from 0.

        Only points in the range of ``f`` have an inverse; elsewhere the iterates drift, and the
        residual ``||f(y) - x||`` (check it) stays large.
        """
        check_tensor(x, "x", who="LPN.invert", shape=(None, self.dim), dtype="float",
                     finite=True, non_empty=True)
        steps = check_number(steps, "steps", who="LPN.invert", low=1, integer=True)
        lr = check_number(lr, "lr", who="LPN.invert", low=0, low_open=True)
        target = x.detach()
        y = torch.zeros_like(target, requires_grad=True)
        optimizer = torch.optim.Adam([y], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                objective = (self.potential(y) - (target * y).sum(1)).sum()
                (grad,) = torch.autograd.grad(objective, y)
                y.grad = grad
                optimizer.step()
        return y.detach()

    def prior_value(self, x: torch.Tensor, *, steps: int = 2000, lr: float = 1e-2) -> torch.Tensor:
        """``phi(x) = <y, x> - ||x||^2 / 2 - psi(y)`` with ``y = f^{-1}(x)`` (paper eq. 3.3).

        Defined up to a constant; shape ``(n,)``.
        """
        y = self.invert(x, steps=steps, lr=lr)
        with torch.no_grad():
            return (y * x).sum(1) - 0.5 * x.pow(2).sum(1) - self.potential(y)


class ClipWeights(Adapter):
    """Training-loop adapter for :func:`priorlab.train.fit`: re-projects the ICNN's z-path
    weights onto ``>= 0`` after every optimiser step (the official ``wclip``)."""

    def setup(self, model: nn.Module, optimizer) -> nn.Module:
        inner = unwrap_model(model)
        if not callable(getattr(inner, "clip_weights", None)):
            raise PriorlabError(f"ClipWeights needs a LearnedProximalNetwork (a model with "
                                f"clip_weights()), got {type(inner).__name__}")
        return model

    def after_step(self, ctx: StepContext) -> None:
        unwrap_model(ctx.model).clip_weights()
