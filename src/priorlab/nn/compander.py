"""Weight Compander: reparametrise each weight through an odd, saturating, steep-at-zero map.

Cakaj, Mehnert & Yang, "Weight Compander: A Simple Weight Reparameterization for
Regularization", IJCNN 2023, arXiv:2306.16993. The layer uses ``w_eff = f(w)`` instead of its
raw parameter ``w``. ``f`` compresses large weights (it saturates, so no single weight can
dominate) and expands small ones (slope above 1 at zero, so near-zero "dead" weights get larger
gradients and are pushed away from zero). Here

    f(w) = alpha * tanh(beta * w / alpha)

with ``alpha`` the saturation level (|w_eff| < alpha) and ``beta`` the slope at zero.
``alpha = inf, beta = 1`` is the identity. The paper's exact f could not be retrieved (no
official code is published); this f has the properties the paper states (see the card's
deviations). ``learnable=True`` trains ``alpha`` and ``beta`` with the network, the paper's
extension.

Use :func:`apply_weight_compander` on a model, or register :class:`WeightCompander` yourself
with ``torch.nn.utils.parametrize.register_parametrization(module, "weight", ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from priorlab.errors import PriorlabError

DEFAULT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# right_inverse clamps |w_eff| / alpha below 1 so atanh stays finite for weights at the rim
_RIM = 1.0 - 1e-6


def _check_positive(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise PriorlabError(f"{name} must be a positive number, got {value!r}") from None
    if math.isnan(value) or value <= 0:
        raise PriorlabError(f"{name} must be positive (got {value}); e.g. alpha=4.0, beta=2.0")
    return value


class WeightCompander(nn.Module):
    """The parametrisation ``w -> alpha * tanh(beta * w / alpha)`` (elementwise, odd).

    ``alpha`` may be ``math.inf`` (no saturation: ``f(w) = beta * w``). With ``learnable=True``
    both are trained, stored as logarithms so they stay positive; they then must be finite.
    ``right_inverse`` maps effective weights back to raw ones, so registering the
    parametrisation keeps the layer's current (initial) weights as its effective weights.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 2.0, *, learnable: bool = False):
        super().__init__()
        alpha, beta = _check_positive("alpha", alpha), _check_positive("beta", beta)
        if math.isinf(beta):
            raise PriorlabError("beta (the slope at zero) must be finite, e.g. beta=2.0")
        if learnable and math.isinf(alpha):
            raise PriorlabError("learnable=True needs a finite alpha (it is trained in log space)")
        self.learnable = bool(learnable)
        log_alpha = torch.tensor(math.log(alpha))  # math.log(inf) = inf: no saturation
        log_beta = torch.tensor(math.log(beta))
        if self.learnable:
            self.log_alpha, self.log_beta = nn.Parameter(log_alpha), nn.Parameter(log_beta)
        else:
            self.register_buffer("log_alpha", log_alpha)
            self.register_buffer("log_beta", log_beta)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha.to(weight.dtype), self.beta.to(weight.dtype)
        if torch.isinf(alpha):
            return beta * weight
        return alpha * torch.tanh(beta * weight / alpha)

    @torch.no_grad()
    def right_inverse(self, effective: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha.to(effective.dtype), self.beta.to(effective.dtype)
        if torch.isinf(alpha):
            return effective / beta
        ratio = (effective / alpha).clamp(-_RIM, _RIM)
        return alpha / beta * torch.atanh(ratio)

    def extra_repr(self) -> str:
        return (f"alpha={float(self.alpha):.4g}, beta={float(self.beta):.4g}, "
                f"learnable={self.learnable}")


def apply_weight_compander(model: nn.Module, alpha: float = 4.0, beta: float = 2.0, *,
                           relative: bool = True, learnable: bool = False,
                           module_types: Iterable[type] = DEFAULT_MODULES,
                           exclude: Iterable[str] = ()) -> list[str]:
    """Register a :class:`WeightCompander` on the ``weight`` of every matching module, in place.

    Only weights of ``module_types`` (Linear and Conv by default) are reparametrised, never
    biases or normalisation parameters. With ``relative=True`` (default) ``alpha`` is in units of
    each weight tensor's standard deviation at the time of the call, so one setting suits
    layers of any width (``alpha=4`` caps each layer's effective weights at 4 initial stds).
    Effective weights start equal to the current weights. Modules whose qualified name starts
    with an entry of ``exclude`` are skipped. Returns the names of the modules changed.
    """
    WeightCompander(alpha, beta)  # validates both before the model is touched
    module_types = tuple(module_types)
    if not module_types or not all(isinstance(t, type) and issubclass(t, nn.Module)
                                   for t in module_types):
        raise PriorlabError(f"module_types must be nn.Module classes, got {module_types!r}")
    exclude = tuple(exclude)
    changed = []
    for name, module in model.named_modules():
        if not isinstance(module, module_types) or any(name.startswith(e) for e in exclude):
            continue
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, WeightCompander) for p in module.parametrizations.weight):
            raise PriorlabError(f"module {name!r} already has a weight compander; apply it once")
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.numel() < 2:
            continue
        scale = float(weight.detach().float().std()) if relative else 1.0
        if not math.isfinite(scale) or scale == 0.0:
            raise PriorlabError(f"module {name!r}: weight std is {scale}; initialise the model "
                                "before applying the compander, or pass relative=False")
        parametrize.register_parametrization(
            module, "weight", WeightCompander(alpha * scale, beta, learnable=learnable))
        changed.append(name)
    if not changed:
        kinds = ", ".join(t.__name__ for t in module_types)
        raise PriorlabError(f"no weight to compand: the model has no {kinds} module (outside "
                            f"exclude={list(exclude)}); pass module_types=... to choose others")
    return changed


def remove_weight_compander(model: nn.Module) -> nn.Module:
    """Bake the effective weights into plain parameters (for export or inference), in place."""
    found = False
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, WeightCompander) for p in module.parametrizations.weight):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            found = True
    if not found:
        raise PriorlabError("the model has no weight compander to remove")
    return model


def effective_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights the layers compute with (companded or not), for diagnostics and histograms."""
    return [m.weight.detach() for m in model.modules() if isinstance(m, DEFAULT_MODULES)]
