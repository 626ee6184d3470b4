"""A compact adaptive Dormand–Prince 5(4) solver that exposes its step statistics.

Shared by two papers (Pal et al.): "Opening the Blackbox: Accelerating Neural Differential
Equations by Regularizing Internal Solver Heuristics" (ICML 2021, arXiv 2105.03918; code
avik-pal/RegNeuralDE.jl) and "Locally Regularized Neural Differential Equations: Some Black
Boxes Were Meant to Remain Closed!" (ICML 2023, arXiv 2303.02262; code
avik-pal/LocalRegNeuralDE.jl). Both regularise the solver's own cost heuristics: the local
error estimate ``EEst`` of a step (the RMS of the embedded error scaled by
``atol + rtol max(|y0|, |y1|)``) times its size ``dt``, or the stiffness estimate times ``dt``.

Why not torchdiffeq / torchode: torchdiffeq 0.2.5 computes the error ratio inside its step
but returns only the solution (no accepted-step list, no differentiable EEst, no NFE counter);
torchode 1.0.1 reports counts per instance but not the per-step error estimates. Here every
accepted step's ``EEst``, stiffness estimate and ``dt`` come back as tensors that carry the
graph (gradients flow to the vector field's parameters, as with the discrete sensitivities of
the official code), and every call of the vector field is counted.

The batch is solved as one system (one step size for the whole batch), as in the official code.
The step-size controller (accept when EEst <= 1, dt *= clamp(0.9 EEst^-1/5, 0.2, 10)) works on
detached values: dt is a constant for autograd, only the stage values carry gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor

VectorField = Callable[[float, torch.Tensor], torch.Tensor]

# Dormand & Prince (1980) tableau: nodes, stage weights, 5th-order weights, and the difference
# between the 5th- and the embedded 4th-order weights (the error estimate's weights).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_LOW = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b - bl for b, bl in zip(_B, _B_LOW))
STAGES_PER_STEP = 6  # new vector-field calls per step (the 7th stage is reused: FSAL)


@dataclass
class SolveStats:
    """What a solve did. ``error_estimates``, ``stiffness_estimates`` and ``dts`` hold one entry
    per accepted step; the first two carry the autograd graph."""

    nfe: int = 0
    n_rejected: int = 0
    times: list[float] = field(default_factory=list)  # start time of each accepted step
    dts: list[float] = field(default_factory=list)
    error_estimates: list[torch.Tensor] = field(default_factory=list)
    stiffness_estimates: list[torch.Tensor] = field(default_factory=list)
    # state at the requested sample time (detached), for the local regulariser
    sample_state: torch.Tensor | None = None

    @property
    def n_accepted(self) -> int:
        return len(self.dts)


class _Counted:
    """The vector field with a call counter (NFE)."""

    def __init__(self, func: VectorField, stats: SolveStats):
        self.func, self.stats = func, stats

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        return self.func(t, y)


def _scaled_rms(x: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, rtol: float, atol: float):
    """RMS of ``x / (atol + rtol max(|y0|, |y1|))``: the solvers' error norm (Hairer et al.)."""
    scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    return torch.sqrt(torch.mean((x / scale) ** 2))


def dopri5_step(func: VectorField, t: float, y: torch.Tensor, dt: float, k1: torch.Tensor,
                rtol: float, atol: float):
    """One Dormand–Prince step from ``(t, y)`` with ``k1 = f(t, y)``.

    Returns ``(y_next, eest, stiffness, k7)``: the 5th-order solution, the scaled local error
    estimate EEst (accept when <= 1), the stiffness estimate |k7 - k6| / |y_next - g6| (the
    Dormand–Prince heuristic for |lambda|, with g6 the 6th stage's input) and f(t + dt, y_next).
    """
    ks = [k1]
    stage_input = y
    for i in range(1, 6):
        stage_input = y + dt * sum(a * k for a, k in zip(_A[i], ks))
        ks.append(func(t + _C[i] * dt, stage_input))
    y_next = y + dt * sum(b * k for b, k in zip(_B, ks) if b != 0.0)
    k7 = func(t + dt, y_next)
    ks.append(k7)
    error = dt * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
    eest = _scaled_rms(error, y, y_next, rtol, atol)
    # tiny floor: the two points coincide only for a vanishing step
    gap = torch.linalg.vector_norm(y_next - stage_input) + 1e-12
    stiffness = torch.linalg.vector_norm(k7 - ks[5]) / gap
    return y_next, eest, stiffness, k7


def initial_step(func: VectorField, t: float, y: torch.Tensor, f0: torch.Tensor, rtol: float,
                 atol: float, order: int = 5) -> float:
    """Hairer, Norsett & Wanner's starting step size (one extra vector-field call)."""
    with torch.no_grad():
        scale = atol + rtol * y.abs()
        d0 = float(torch.sqrt(torch.mean((y / scale) ** 2)))
        d1 = float(torch.sqrt(torch.mean((f0 / scale) ** 2)))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = func(t + h0, y + h0 * f0)
        d2 = float(torch.sqrt(torch.mean(((f1 - f0) / scale) ** 2))) / h0
        largest = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if largest <= 1e-15 else (0.01 / largest) ** (1 / (order + 1))
    return min(100 * h0, h1)


def _check_solve_args(y0, t0, t1, rtol, atol, max_steps, who):
    check_tensor(y0, "y0", who=who, min_ndim=1, finite=True, non_empty=True,
                 dtype=(torch.float32, torch.float64))
    t0 = check_number(t0, "t0", who=who)
    t1 = check_number(t1, "t1", who=who)
    if not t1 > t0:
        raise PriorlabError(f"{who}: need t1 > t0, got t0={t0}, t1={t1}")
    rtol = check_number(rtol, "rtol", who=who, low=0.0, high=1.0, low_open=True)
    atol = check_number(atol, "atol", who=who, low=0.0, high=1.0, low_open=True)
    max_steps = check_number(max_steps, "max_steps", who=who, low=1, integer=True)
    return t0, t1, rtol, atol, max_steps


def solve(func: VectorField, y0: torch.Tensor, t0: float = 0.0, t1: float = 1.0, *,
          rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 1000,
          sample_time: float | None = None) -> tuple[torch.Tensor, SolveStats]:
    """Integrate ``dy/dt = func(t, y)`` from ``t0`` to ``t1`` adaptively; returns ``(y(t1), stats)``.

    ``sample_time`` in (t0, t1) also records the (detached) state there, interpolated with the
    step's cubic Hermite polynomial (what ``saveat`` gives the local regulariser officially).
    Raises PriorlabError when ``max_steps`` steps do not reach ``t1`` (the dynamics became too
    stiff for the tolerance) or the state turns non-finite.
    """
    who = "neural_ode.solve"
    t0, t1, rtol, atol, max_steps = _check_solve_args(y0, t0, t1, rtol, atol, max_steps, who)
    if sample_time is not None:
        sample_time = check_number(sample_time, "sample_time", who=who, low=t0, high=t1)
    stats = SolveStats()
    f = _Counted(func, stats)
    t, y = t0, y0
    k1 = f(t, y)
    dt = min(initial_step(f, t, y, k1, rtol, atol), t1 - t0)
    for _ in range(max_steps):
        dt = min(dt, t1 - t)
        y_next, eest, stiffness, k7 = dopri5_step(f, t, y, dt, k1, rtol, atol)
        error = float(eest.detach())
        if error != error or not torch.isfinite(y_next.detach()).all():
            raise PriorlabError(f"{who}: the state became non-finite at t={t:.4g} (dt={dt:.3g})")
        if error <= 1.0:
            stats.times.append(t)
            stats.dts.append(dt)
            stats.error_estimates.append(eest)
            stats.stiffness_estimates.append(stiffness)
            if sample_time is not None and stats.sample_state is None and t <= sample_time <= t + dt:
                stats.sample_state = _hermite(y, k1, y_next, k7, dt, (sample_time - t) / dt).detach()
            t, y, k1 = t + dt, y_next, k7
            if t >= t1 - 1e-12 * max(1.0, abs(t1)):
                return y, stats
            factor = min(10.0, max(0.2, 0.9 * max(error, 1e-10) ** -0.2))
        else:
            stats.n_rejected += 1
            factor = max(0.2, 0.9 * error ** -0.2)
        dt = dt * factor
    raise PriorlabError(f"{who}: {max_steps} steps did not reach t1={t1} (at t={t:.4g}); the "
                        "dynamics are too stiff for rtol/atol, or raise max_steps")


def _hermite(y0, f0, y1, f1, dt, s):
    """Cubic Hermite interpolation on a step at fraction ``s`` in [0, 1]."""
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
    return h00 * y0 + h10 * dt * f0 + h01 * y1 + h11 * dt * f1


def local_step(func: VectorField, t: float, y: torch.Tensor, *, rtol: float = 1e-5,
               atol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """One extra solver step from ``(t, y)`` with the solver's starting step size, as the local
    regulariser takes it at a random time (LocalRegNeuralDE ``_perform_step``): returns
    ``(eest, stiffness, dt, nfe)``; gradients flow to ``func``'s parameters (``y`` is taken as a
    constant, as in the official code). The step is taken whether or not it would be accepted.
    """
    who = "neural_ode.local_step"
    check_tensor(y, "y", who=who, min_ndim=1, dtype="float", finite=True, non_empty=True)
    t = check_number(t, "t", who=who)
    rtol = check_number(rtol, "rtol", who=who, low=0.0, high=1.0, low_open=True)
    atol = check_number(atol, "atol", who=who, low=0.0, high=1.0, low_open=True)
    stats = SolveStats()
    f = _Counted(func, stats)
    y = y.detach()
    k1 = f(t, y)
    dt = initial_step(f, t, y, k1.detach(), rtol, atol)
    _, eest, stiffness, _ = dopri5_step(f, t, y, dt, k1, rtol, atol)
    return eest, stiffness, dt, stats.nfe


class TimeMLP(nn.Module):
    """Time-dependent dynamics f(t, y) = tanh(W2 [tanh(W1 [y, t]), t]), the official MNIST
    NODE's ``MLPDynamics`` (time appended to each layer's input, tanh after each)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        check_number(dim, "dim", who="TimeMLP", low=1, integer=True)
        check_number(hidden, "hidden", who="TimeMLP", low=1, integer=True)
        self.layer1 = nn.Linear(dim + 1, hidden)
        self.layer2 = nn.Linear(hidden + 1, dim)

    def forward(self, t: float, y: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "y", who="TimeMLP", shape=(None, self.layer1.in_features - 1),
                     dtype=self.layer1.weight.dtype, hint="pass states (batch, dim) in the model's dtype")
        time = y.new_full((y.shape[0], 1), float(t))
        hidden = torch.tanh(self.layer1(torch.cat([y, time], dim=1)))
        return torch.tanh(self.layer2(torch.cat([hidden, time], dim=1)))


class NeuralODE(nn.Module):
    """``y(t1)`` of ``dy/dt = dynamics(t, y)``, ``y(t0) = x``, by the adaptive solver above.

    After each call ``last_stats`` holds the solve's :class:`SolveStats` (NFE, accepted steps'
    error and stiffness estimates with their graph). With ``sample_time`` the state at that time
    is recorded too (for :func:`local_step`).
    """

    def __init__(self, dynamics: nn.Module, t0: float = 0.0, t1: float = 1.0, *,
                 rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 1000):
        super().__init__()
        _check_solve_args(torch.zeros(1), t0, t1, rtol, atol, max_steps, "NeuralODE")
        self.dynamics = dynamics
        self.t0, self.t1, self.rtol, self.atol, self.max_steps = t0, t1, rtol, atol, max_steps
        self.last_stats: SolveStats | None = None

    def forward(self, x: torch.Tensor, sample_time: float | None = None) -> torch.Tensor:
        y, self.last_stats = solve(self.dynamics, x, self.t0, self.t1, rtol=self.rtol,
                                   atol=self.atol, max_steps=self.max_steps,
                                   sample_time=sample_time)
        return y

    def local_step(self, t: float, y: torch.Tensor):
        """:func:`local_step` with this model's dynamics and tolerances."""
        return local_step(self.dynamics, t, y, rtol=self.rtol, atol=self.atol)
