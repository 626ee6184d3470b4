"""Lion (EvoLved Sign Momentum), Chen et al., "Symbolic Discovery of Optimization Algorithms",
NeurIPS 2023, arXiv:2302.06675. Official code: google/automl, lion/lion_pytorch.py (Apache-2.0).

Per parameter, with gradient ``g`` and momentum ``m`` (the only state)::

    c = beta1 * m + (1 - beta1) * g          # interpolation used for the update
    w = w * (1 - lr * weight_decay) - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g          # momentum tracked with a slower beta2

Every coordinate moves by exactly ``lr`` (plus decoupled weight decay), so Lion wants a learning
rate 3-10x smaller than AdamW's and a weight decay 3-10x larger, keeping ``lr * weight_decay``
about the same.

A NaN or infinite gradient would freeze Lion silently (``sign(NaN) = 0`` moves nothing, and the
momentum keeps the NaN for good), so by default such a step is skipped for the whole parameter
group with a warning, leaving weights and momentum as they were (``nonfinite="raise"`` raises).
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer

from priorlab.errors import PriorlabError
from priorlab.optim.checks import (check_loaded_state_dict, check_nonfinite_policy, handle_nonfinite,
                                   nonfinite_gradients)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_hyperparameters(lr, betas, weight_decay, foreach, nonfinite="skip") -> None:
    if not _is_number(lr) or not math.isfinite(lr) or lr < 0:
        raise PriorlabError(f"Lion: lr must be a finite number >= 0, got {lr!r}; "
                            "use e.g. lr=1e-4 (3-10x smaller than you would give AdamW)")
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)):
        raise PriorlabError(f"Lion: betas must be two numbers in [0, 1), got {betas!r}; "
                            "the paper's defaults are betas=(0.9, 0.99)")
    if not _is_number(weight_decay) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise PriorlabError(f"Lion: weight_decay must be a finite number >= 0, got {weight_decay!r}; "
                            "use e.g. 3-10x the value you would give AdamW, or 0 to disable it")
    if foreach is not None and not isinstance(foreach, bool):
        raise PriorlabError(f"Lion: foreach must be None, True or False, got {foreach!r}")
    check_nonfinite_policy(nonfinite, "Lion")


def _check_group(group: dict) -> None:
    _check_hyperparameters(group["lr"], group["betas"], group["weight_decay"], group["foreach"],
                           group["nonfinite"])


class Lion(Optimizer):
    """Lion: sign of an interpolated momentum, with decoupled weight decay (arXiv:2302.06675).

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        lr: step size; every coordinate moves by exactly ``lr`` per step (official default 1e-4).
        betas: ``(beta1, beta2)``: beta1 interpolates momentum and gradient for the update, beta2
            updates the momentum (official defaults (0.9, 0.99)).
        weight_decay: decoupled decay; weights are multiplied by ``1 - lr * weight_decay``.
        foreach: ``True`` uses the multi-tensor ``torch._foreach_*`` kernels, ``False`` a loop over
            parameters; ``None`` picks foreach when all parameters share one accelerator device
            type (CUDA, ...) and the loop on CPU, where it measured faster (its temporaries are
            allocated one at a time and reused). Both give the same numbers bit for bit.
        nonfinite: what a step does when a gradient in a parameter group holds NaN or infinity:
            ``"skip"`` (default) skips that group's update, state included, and warns with the
            parameters' shapes; ``"raise"`` raises PriorlabError.

    State: one buffer per parameter, ``exp_avg`` (the momentum), half of AdamW's two.
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, foreach: bool | None = None, nonfinite: str = "skip"):
        _check_hyperparameters(lr, betas, weight_decay, foreach, nonfinite)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      foreach=foreach, nonfinite=nonfinite))

    def add_param_group(self, param_group: dict) -> None:
        # checked before the group joins, so a rejected group leaves the optimizer unchanged
        _check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from :meth:`state_dict`, with the checks ``__init__`` makes; a state that
        fails them (another optimiser's, a corrupt one) raises and leaves this one unchanged."""
        check_loaded_state_dict(state_dict, self, "Lion", _check_group)
        for index, entry in state_dict["state"].items():
            if set(entry) != {"exp_avg"} or not isinstance(entry["exp_avg"], torch.Tensor):
                raise PriorlabError(f"Lion.load_state_dict: parameter {index} must have the state "
                                    f"{{'exp_avg': tensor}}, got keys {sorted(entry)}; is it "
                                    "another optimizer's state?")
        super().load_state_dict(state_dict)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("nonfinite", "skip")

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One Lion step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise PriorlabError(
                        f"Lion does not support sparse gradients (parameter of shape "
                        f"{tuple(p.shape)}); use dense gradients, "
                        "e.g. nn.Embedding(..., sparse=False)")
            if not params:
                continue
            bad = nonfinite_gradients(params)
            if bad:  # checked before any state is created, so a skipped step changes nothing
                # frames above: this step, torch's no_grad and step-hook wrappers, the caller
                handle_nonfinite(bad, group["nonfinite"], "Lion", stacklevel=5)
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            foreach = group["foreach"]
            if foreach is None:
                device_types = {p.device.type for p in params}
                foreach = len(device_types) == 1 and "cpu" not in device_types
            update = _lion_foreach if foreach else _lion_per_parameter
            beta1, beta2 = group["betas"]
            update(params, grads, exp_avgs, lr=group["lr"], beta1=beta1, beta2=beta2,
                   weight_decay=group["weight_decay"])
        return loss


# Both paths apply the same elementwise operations in the same order, so they agree bit for bit.
# lerp(g, m, beta1) = g + beta1 * (m - g) is the official beta1 * m + (1 - beta1) * g in one pass;
# lerp_(m, g, 1 - beta2) likewise for the momentum.

def _lion_per_parameter(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay):
    for p, g, m in zip(params, grads, exp_avgs):
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        p.add_(torch.lerp(g, m, beta1).sign_(), alpha=-lr)
        m.lerp_(g, 1 - beta2)


def _lion_foreach(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay):
    # the multi-tensor kernels need one device and dtype per call
    buckets = defaultdict(lambda: ([], [], []))
    for p, g, m in zip(params, grads, exp_avgs):
        bucket = buckets[(p.device, p.dtype)]
        bucket[0].append(p)
        bucket[1].append(g)
        bucket[2].append(m)
    for ps, gs, ms in buckets.values():
        if weight_decay != 0:
            torch._foreach_mul_(ps, 1 - lr * weight_decay)
        updates = torch._foreach_lerp(gs, ms, beta1)
        torch._foreach_sign_(updates)
        torch._foreach_add_(ps, updates, alpha=-lr)
        torch._foreach_lerp_(ms, gs, 1 - beta2)
