"""perpGrad (written ⊥Grad in the paper): keep only the gradient component orthogonal to the weights.

Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability", ICLR 2025,
arXiv:2501.04697 (official code: LucasPrietoAl/grokking-at-the-edge-of-numerical-stability,
``orthograd.py``).

Past the point of fitting the training set, the gradient of cross-entropy mostly points along
the weights themselves ("naive loss minimisation": scale the logits up, predictions unchanged),
which delays generalisation and ends in Softmax Collapse. perpGrad removes that direction per
parameter tensor and keeps the gradient's length::

    g_perp = g - (w.g / (w.w + eps)) w
    g     <- g_perp * ||g|| / (||g_perp|| + eps)        (eps = 1e-30, as the official code)

then lets any optimiser (AdamW, SGD, ...) take its step with the projected gradient.

A step whose gradients hold a NaN or an infinity is skipped with a warning before projecting
(the projection would spread the NaN over the whole tensor), leaving weights and the base
optimiser's state as they were; ``nonfinite="raise"`` raises instead.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable

import torch

from priorlab.errors import PriorlabError
from priorlab.optim.checks import (check_loaded_state_dict, check_nonfinite_policy, handle_nonfinite,
                                   nonfinite_gradients)
from priorlab.validation import check_number

DEFAULT_EPS = 1e-30


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise PriorlabError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


@torch.no_grad()
def perp_grad_(params: Iterable[torch.Tensor], eps: float = DEFAULT_EPS) -> None:
    """Project each parameter's ``.grad`` in place onto the part orthogonal to the parameter.

    Each tensor is treated as one flat vector. The projected gradient is rescaled to the original
    gradient's norm. Parameters without a gradient are skipped. Half-precision tensors are
    projected in float32 (``eps`` = 1e-30 underflows to zero in float16).
    """
    eps = _check_eps(eps)
    if isinstance(params, torch.Tensor):
        params = [params]
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise PriorlabError(f"perp_grad_ needs an iterable of tensors (e.g. model.parameters()), "
                                f"got an item of type {type(p).__name__}")
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise PriorlabError("perp_grad_ does not support sparse gradients; use a dense "
                                "nn.Embedding (sparse=False)")
        work = torch.promote_types(p.dtype, torch.float32)
        w = p.detach().reshape(-1).to(work)
        g = p.grad.reshape(-1).to(work)
        coef = torch.dot(w, g) / (torch.dot(w, w) + eps)
        g_perp = g - coef * w
        g_perp = g_perp * (g.norm(2) / (g_perp.norm(2) + eps))
        p.grad.copy_(g_perp.view_as(p.grad))


class PerpGrad(torch.optim.Optimizer):
    """Wrap a torch optimiser so that every step uses perpGrad-projected gradients.

    ``PerpGrad(torch.optim.AdamW(model.parameters(), lr=1e-2))`` is the paper's ⊥AdamW.
    ``param_groups``, ``state``, ``state_dict``, ``load_state_dict`` and ``zero_grad`` are the base
    optimiser's, so learning-rate schedulers and checkpoints work as with the base alone.
    ``step(closure)`` evaluates the closure first (so the projection applies to the fresh
    gradients), projects, then steps the base optimiser.

    ``nonfinite``: ``"skip"`` (default) skips a step whose gradients hold NaN or infinity, with a
    warning naming the parameters' shapes; ``"raise"`` raises PriorlabError.
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, eps: float = DEFAULT_EPS, *,
                 nonfinite: str = "skip"):
        if isinstance(base_optimizer, type):
            raise PriorlabError(f"PerpGrad wraps an optimizer instance, got the class "
                                f"{base_optimizer.__name__}; pass e.g. "
                                f"{base_optimizer.__name__}(model.parameters(), lr=...)")
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise PriorlabError(f"PerpGrad wraps a torch.optim.Optimizer, got "
                                f"{type(base_optimizer).__name__}; pass e.g. "
                                f"torch.optim.AdamW(model.parameters(), lr=1e-2)")
        if isinstance(base_optimizer, torch.optim.LBFGS):
            raise PriorlabError("PerpGrad cannot wrap LBFGS: it re-evaluates the closure inside "
                                "its step, which would bypass the projection; use a first-order "
                                "optimiser such as AdamW or SGD")
        self.base_optimizer = base_optimizer
        self.eps = _check_eps(eps)
        self.nonfinite = check_nonfinite_policy(nonfinite, "PerpGrad")
        # Sets up torch's hook machinery; the groups are then shared with (not copied from) the base.
        super().__init__(base_optimizer.param_groups, base_optimizer.defaults)
        self._share_base()

    def _share_base(self) -> None:
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = self.base_optimizer.defaults

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"]]
        bad = nonfinite_gradients(params)
        if bad:
            handle_nonfinite(bad, self.nonfinite, "PerpGrad", stacklevel=4)  # the step's caller
            return loss
        perp_grad_(params, eps=self.eps)
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load the base optimiser's state. Checked first (a rejected state leaves the optimiser
        unchanged): groups must match, hold no other optimiser's hyperparameters, have a finite
        lr >= 0, and state tensors must be finite."""
        check_loaded_state_dict(state_dict, self.base_optimizer, "PerpGrad",
                                _base_group_check(self.base_optimizer))
        self.base_optimizer.load_state_dict(state_dict)
        self._share_base()  # the base rebuilds its groups and state on load

    def __getstate__(self) -> dict:
        return {"base_optimizer": self.base_optimizer, "eps": self.eps, "nonfinite": self.nonfinite}

    def __setstate__(self, state: dict) -> None:  # copy.deepcopy and pickle
        super().__setstate__({"nonfinite": "skip", **state, "defaults": state["base_optimizer"].defaults})
        self._share_base()

    def __repr__(self) -> str:
        return (f"PerpGrad(eps={self.eps:g}, nonfinite={self.nonfinite!r}, "
                f"base={self.base_optimizer!r})")


def _base_group_check(base: torch.optim.Optimizer) -> Callable[[dict], None]:
    """Checks a loaded group with the base optimiser's own constructor, so a loaded state passes
    exactly the checks its arguments would (e.g. AdamW's betas in [0, 1)), plus a finite lr."""
    cls = type(base)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    device = next((p.device for g in base.param_groups for p in g["params"]), torch.device("cpu"))

    def check(group: dict) -> None:
        for name in ("lr", "weight_decay"):
            if name in group:
                check_number(group[name], name, who="PerpGrad.load_state_dict", low=0)
        try:
            cls([torch.nn.Parameter(torch.zeros(1, device=device))],
                **{k: v for k, v in group.items() if k in accepted})
        except (TypeError, ValueError, RuntimeError) as error:
            raise PriorlabError(f"PerpGrad.load_state_dict: the state's settings fail "
                                f"{cls.__name__}'s checks: {error}") from None
    return check
