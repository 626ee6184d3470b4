"""Paper card (seed 24): the dynamical-stability bounds of GD and SGD, as a diagnostic.

Wu & Su, "The Implicit Regularization of Dynamical Stability in Stochastic Gradient Descent",
ICML 2023, arXiv:2305.17490. At a global minimum of a square loss, linear stability of
single-sample SGD with learning rate ``lr`` requires ``Tr(H) <= 2/lr``, while gradient descent
only needs ``lambda_max(H) <= 2/lr``. :func:`stability_bound_check` measures both quantities on any
model and loss and says which bound a point satisfies; :class:`DiagonalLinearNet` is the paper's
model ``f(x) = <u*u - v*v, x>`` on which ``Tr(H)`` is equivalent to the l1 norm of the predictor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from priorlab.diagnostics.hessian import (
    hessian_matrix,
    hutchinson_trace,
    select_params,
    top_eigenvalue,
)
from priorlab.errors import PriorlabError
from priorlab.registry import MethodCard, Paper, register


class DiagonalLinearNet(nn.Module):
    """``f(x) = <u ⊙ u - v ⊙ v, x>``: a linear predictor ``b = u² - v²`` with a two-layer
    diagonal parametrisation. Initialised at ``u = v = init_scale`` (so ``b = 0``); the scale
    sets the implicit bias of gradient flow (small: sparse, l1-like; large: dense, l2-like).
    """

    def __init__(self, dim: int, init_scale: float = 1.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise PriorlabError(f"dim must be an integer >= 1, got {dim!r}")
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale >= 0):
            raise PriorlabError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
        self.u = nn.Parameter(torch.full((dim,), float(init_scale), dtype=dtype))
        self.v = nn.Parameter(torch.full((dim,), float(init_scale), dtype=dtype))

    @property
    def predictor(self) -> torch.Tensor:
        """The effective linear predictor ``b = u² - v²``."""
        return self.u * self.u - self.v * self.v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.u.numel():
            raise PriorlabError(f"DiagonalLinearNet expects inputs of shape (N, {self.u.numel()}), "
                                f"got {tuple(x.shape)}")
        return x.to(self.u.dtype) @ self.predictor


@dataclass(frozen=True)
class StabilityReport:
    """Curvature at one point against the learning rate's stability thresholds."""

    lr: float
    trace: float  # Tr(H)
    sharpness: float  # lambda_max(H)
    exact: bool  # exact Hessian (True) or Hutchinson / power-iteration estimates

    @property
    def bound(self) -> float:
        """2 / lr: the threshold both bounds compare against."""
        return 2.0 / self.lr

    @property
    def trace_ratio(self) -> float:
        """lr * Tr(H) / 2; at most 1 at a minimum that single-sample SGD can stably stay at."""
        return self.lr * self.trace / 2.0

    @property
    def sharpness_ratio(self) -> float:
        """lr * lambda_max(H) / 2; at most 1 at a minimum that GD can stably stay at."""
        return self.lr * self.sharpness / 2.0

    @property
    def sgd_bound_holds(self) -> bool:
        return self.trace <= self.bound

    @property
    def gd_bound_holds(self) -> bool:
        return self.sharpness <= self.bound


def stability_bound_check(model: nn.Module, loss_fn, batches, lr: float, *, params=None,
                          exact_up_to: int = 2000, num_samples: int = 200, iters: int = 200,
                          seed: int = 0) -> StabilityReport:
    """Measure ``Tr(H)`` and ``lambda_max(H)`` of the mean loss over ``batches`` against ``2/lr``.

    Wu & Su (arXiv:2305.17490): at a global minimum of a square loss, single-sample SGD with
    learning rate ``lr`` can be linearly stable only if ``Tr(H) <= 2/lr``; GD only if
    ``lambda_max(H) <= 2/lr``. Larger batches weaken SGD's condition towards GD's. The
    Hessian is exact when at most ``exact_up_to`` parameters are selected, otherwise estimated
    with ``num_samples`` Hutchinson probes and ``iters`` power iterations (seeded by ``seed``).
    ``batches`` and ``params`` are as in :mod:`priorlab.diagnostics.hessian`.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise PriorlabError(f"lr must be a positive finite number, got {lr!r}")
    if sum(p.numel() for p in select_params(model, params)) <= exact_up_to:
        hessian = hessian_matrix(model, loss_fn, batches, params=params, max_params=exact_up_to)
        return StabilityReport(lr=float(lr), trace=float(torch.trace(hessian)),
                               sharpness=float(torch.linalg.eigvalsh(hessian)[-1]), exact=True)
    trace = hutchinson_trace(model, loss_fn, batches, num_samples=num_samples, params=params,
                             seed=seed).trace
    sharpness = top_eigenvalue(model, loss_fn, batches, iters=iters, params=params, seed=seed)
    return StabilityReport(lr=float(lr), trace=trace, sharpness=sharpness, exact=False)


USAGE = """\
import torch
from priorlab.methods.stability import DiagonalLinearNet, stability_bound_check

g = torch.Generator().manual_seed(0)
x = torch.randn(20, 30, generator=g, dtype=torch.float64)
b_true = torch.zeros(30, dtype=torch.float64); b_true[:3] = 1.0
y = x @ b_true
model = DiagonalLinearNet(30, init_scale=0.5)
mse = lambda out, target: 0.5 * ((out - target) ** 2).mean()
lr = 0.02
opt = torch.optim.SGD(model.parameters(), lr=lr)
for step in range(150):                      # single-sample SGD
    i = torch.randint(0, 20, (1,), generator=g)
    loss = mse(model(x[i]), y[i])
    opt.zero_grad(); loss.backward(); opt.step()
report = stability_bound_check(model, mse, (x, y), lr=lr)   # any model, loss and batches
print(f"lr*Tr(H)/2 = {report.trace_ratio:.2f} (SGD needs <= 1), "
      f"lr*lambda_max/2 = {report.sharpness_ratio:.2f} (GD needs <= 1)")
"""

CARD = register(MethodCard(
    id="stability-bound",
    name="Dynamical-stability bounds of SGD vs GD",
    family="T: training dynamics",
    kind="function",
    paper=Paper(
        title="The Implicit Regularization of Dynamical Stability in Stochastic Gradient Descent",
        authors="Lei Wu et al.", venue="ICML", year=2023, arxiv="2305.17490", code_url="",
        licence="no official code", seed_id=24),
    summary=("At a global minimum of a square loss, single-sample SGD with learning rate lr can "
             "only stay (be linearly stable) if Tr(H) <= 2/lr, whereas GD needs only "
             "lambda_max(H) <= 2/lr. stability_bound_check measures both on any model and loss; "
             "on a diagonal linear network b = u*u - v*v, Tr(H) >= 4 ||b||_1 (isotropic inputs), "
             "so SGD's bound caps the l1 norm and favours sparse predictors."),
    usage=USAGE,
    hyperparameters=(
        "lr: the learning rate the bounds refer to (2/lr). exact_up_to=2000: exact Hessian for "
        "up to that many parameters (P Hessian-vector products); beyond it num_samples=200 "
        "Hutchinson probes and iters=200 power iterations, seeded. The trace bound is for "
        "batch size 1; larger batches loosen it towards GD's lambda_max bound. "
        "DiagonalLinearNet(init_scale): larger scale = denser gradient-flow solutions."),
    deviations=(
        "No official code exists; the diagnostic follows the paper's definitions (Hessian of the "
        "training loss at the current point, compared with 2/lr). It reports the two quantities "
        "and whether each bound holds; it does not certify linear stability (the bounds are "
        "necessary conditions, and only at a minimum)."),
    claim_scope=(
        "The paper proves the bounds for square loss at global minima and relates them to "
        "generalisation for two-layer ReLU and diagonal linear networks, with small numerical "
        "experiments. Here: diagonal linear networks on sparse regression (d=100, n=40, "
        "5 nonzeros), GD vs single-sample SGD at three learning rates, exact Hessians. The "
        "verdict tests the bounds themselves (each SGD run's lr Tr(H)/2 and each GD run's "
        "lr lambda_max(H)/2 against 1; claim revision 2), the l1 norms (SGD lower than GD) and "
        "the test errors; the paper's two-layer ReLU results are not reproduced."),
    component=stability_bound_check,
    adapter=None,
    example=None,
    reproduction="p024_stability",
    tags=("sharpness", "hessian", "implicit-bias", "diagnostic"),
))
