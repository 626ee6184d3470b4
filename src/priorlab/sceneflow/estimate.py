"""One entry point for run-time-optimised scene flow: :func:`estimate_flow`.

Methods:

* ``"nsfp"`` -- Neural Scene Flow Prior (see :mod:`priorlab.sceneflow.nsfp`): coordinate MLP + cycle
  MLP, truncated Chamfer, Adam.
* ``"fast"`` -- Fast Neural Scene Flow (see :mod:`priorlab.sceneflow.fast`): the same MLP trained on a
  voxel-grid distance-transform loss, Adam, no cycle net.
* ``"rigid"`` -- a rigid-motion prior, no optimiser (see :mod:`priorlab.sceneflow.rigid`): ego
  motion (given or estimated by GICP) plus clusters registered as rigid bodies, ICP-Flow style. It
  uses every point; pass ``ego_motion``, ``ground1``/``ground2`` and per-point ``times1``/``times2``
  when you have them.
* ``"free"`` -- no prior: one free 3-vector per point (initialised at zero), optimised directly with
  the same truncated Chamfer (forward term only) by Adam. This is the baseline the NSFP paper argues
  against: nothing couples neighbouring points, so each point just slides to its nearest neighbour.

The three optimised methods share one loop: the loss of the current parameters is evaluated, the
lowest-loss iterate is remembered, an optional ``callback(iteration, loss)`` is called, early
stopping is checked (NSFP's rule: stop after ``patience`` consecutive iterations without the loss
going below ``best - min_delta``; ``patience=0`` disables it; NaN stops), then a gradient step is
taken. Pressing Ctrl-C (``KeyboardInterrupt``) inside the loop ends it early and returns the best
iterate so far with ``interrupted=True``.

Real-world coordinates: both clouds are centred (in float64) on the mean of the fitted ``pc1``
points before they are cast to float32 for the fit, and the returned field subtracts the same
centre from its queries, so a pair 1 km or 1e6 m from the origin (map / UTM frames) gives the
same flow as the same pair near the origin (exactly, up to float rounding). Nothing is scaled:
the truncation (m^2), the voxel size (m) and the MLP's smoothness are all meant in metres. Pass
float64 points for such coordinates: float32 itself resolves only ~6 cm at 1e6 m (a warning says so).

Degenerate fits are reported, never passed off as converged: when at the start every Chamfer term is
beyond the truncation (the clouds do not overlap within ``sqrt(truncate)`` m; the loss is exactly 0
with zero gradient) or the loss is positive with an exactly zero gradient, :class:`PriorlabError`
is raised (nothing would be fitted). When under 1 % of the terms are within the truncation at the
start, a :class:`DegenerateFitWarning` is issued and the fit goes on. When a fit reaches a state
with every term truncated later on, it stops there (``stop_reason="degenerate"``, with a warning) and
returns the best earlier iterate instead of the meaningless loss-0 one.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field as dc_field
from typing import Callable

import numpy as np
import torch

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.progress import progress as _progress_bar
from priorlab.sceneflow.fast import FAST_DEFAULTS, FastProblem
from priorlab.sceneflow.losses import KDIndex, _chamfer
from priorlab.sceneflow.nsfp import NSFP_DEFAULTS, NSFPProblem
from priorlab.sceneflow.preprocess import check_points, subsample
from priorlab.sceneflow.rigid import RIGID_DEFAULTS, estimate_rigid

__all__ = ["FlowResult", "estimate_flow", "METHODS", "FREE_DEFAULTS", "defaults", "DegenerateFitWarning"]

FREE_DEFAULTS = dict(lr=8e-3, max_iters=5000, patience=100, min_delta=1e-4, weight_decay=0.0, truncate=2.0)
_DEFAULTS = {"nsfp": NSFP_DEFAULTS, "fast": FAST_DEFAULTS, "free": FREE_DEFAULTS, "rigid": RIGID_DEFAULTS}
METHODS = tuple(_DEFAULTS)
OPTIMISED = ("nsfp", "fast", "free")  # methods fitted by the optimisation loop (points, iterations, lr)
_LOOP_KEYS = ("lr", "max_iters", "patience", "min_delta")
_COMMON_OPTIONS = ("callback", "num_threads")
_FEW_KEPT = 0.01  # under this share of Chamfer terms within the truncation at the start, warn
_FLOAT32_COARSE_M = 0.01  # warn when float32 input resolves coordinates only this coarsely (|x| >= 2**17 m)


class DegenerateFitWarning(UserWarning):
    """A scene-flow fit had (almost) nothing to fit: the flow may be meaningless."""


def defaults(method: str) -> dict:
    """The default settings of ``method`` (a copy)."""
    if method not in _DEFAULTS:
        raise did_you_mean(method, METHODS, "scene-flow method")
    return dict(_DEFAULTS[method])


@dataclass
class FlowResult:
    """Outcome of :func:`estimate_flow`.

    ``flow``: (N, 3) float32, one vector for every point of ``pc1`` as given (``pc1 + flow`` ~ ``pc2``).
    ``iterations``: optimisation steps run. ``time_s``: wall time of the whole call.
    ``final_loss``: loss of the returned (lowest-loss) iterate; ``loss_history``: loss per iteration.
    ``field``: the fitted continuous flow field, ``field(points (M, 3)) -> (M, 3)``; ``None`` for
    ``"free"``. ``interrupted``: the loop was stopped by Ctrl-C. ``best_iteration``: index of the
    returned iterate. ``info``: details -- ``fit_points``, ``fit_indices`` (the rows of ``pc1`` fitted),
    ``stop_reason`` ("max_iters",
    "early_stopping", "nan", "interrupted", "degenerate"), ``centre`` (the float64 point subtracted from
    both clouds before fitting; zeros with ``centre=False``), ``kept_share_start`` (share of Chamfer
    terms within the truncation at the start; nsfp/free), ``setup_s`` (building nets / distance grid),
    ``loop_s``
    (the optimisation loop), ``eval_s`` (evaluating the field at every point), and for "fast"
    ``grid_shape`` / ``grid_bytes``.
    """

    flow: np.ndarray
    iterations: int
    time_s: float
    final_loss: float
    method: str
    loss_history: list = dc_field(default_factory=list)
    field: Callable[[np.ndarray], np.ndarray] | None = None
    interrupted: bool = False
    best_iteration: int = -1
    info: dict = dc_field(default_factory=dict)


class _EarlyStopping:
    """NSFP/FNSF ``utils.EarlyStopping`` (mode 'min', absolute min_delta)."""

    def __init__(self, patience: int, min_delta: float):
        self.patience = patience
        self.min_delta = min_delta
        self.best = None
        self.bad = 0

    def step(self, value: float) -> bool:
        if self.patience == 0:
            return False
        if self.best is None:
            self.best = value
            return False
        if math.isnan(value):
            return True
        if value < self.best - self.min_delta:
            self.best = value
            self.bad = 0
        else:
            self.bad += 1
        return self.bad >= self.patience


class _FreeProblem:
    def __init__(self, pc1: torch.Tensor, pc2: torch.Tensor, opts: dict, lr: float, seed: int, device):
        self.pc1 = pc1
        self.pc2 = pc2
        self.truncate = opts["truncate"]
        self.flow = torch.zeros_like(pc1, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.flow], lr=lr, weight_decay=opts["weight_decay"])
        self.idx_pc2 = KDIndex(pc2) if pc1.device.type == "cpu" else None
        self.kept_share = 1.0

    def loss(self) -> torch.Tensor:
        counts = [0, 0]
        loss = _chamfer(self.pc1 + self.flow, self.pc2, self.truncate, q_index=self.idx_pc2, counts=counts)
        self.kept_share = counts[0] / counts[1]
        return loss

    def snapshot(self):
        return self.flow.detach().clone()

    def field(self, state):
        return None


@contextlib.contextmanager
def _threads(n):
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PriorlabError(f"num_threads must be a positive integer or None, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PriorlabError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PriorlabError("device 'cuda' requested but no CUDA GPU is available; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise PriorlabError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def _positive_int(v, name, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise PriorlabError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _nonneg_float(v, name, strict=False):
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise PriorlabError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(x) or x < 0 or (strict and x == 0):
        raise PriorlabError(
            f"{name} must be a {'positive' if strict else 'non-negative'} finite number, got {v!r}"
        )
    return x


def _warn_if_coarse(arr: np.ndarray, name: str) -> None:
    """float32 input far from the origin has already lost precision; centring cannot restore it."""
    if arr.dtype != np.float32:
        return
    top = float(np.abs(arr).max())
    step = float(np.spacing(np.float32(top)))
    if step >= _FLOAT32_COARSE_M:
        warnings.warn(
            f"{name} is float32 with coordinates up to {top:.3g} m, where float32 resolves only "
            f"{step:.2g} m; pass float64 points (e.g. load_points(path, dtype=np.float64))",
            UserWarning,
            stacklevel=3,
        )


def _world_field(field, centre: np.ndarray):
    """The fitted field queried in the caller's coordinates: the centre is subtracted in float64."""
    if field is None:
        return None

    def query(points) -> np.ndarray:
        arr = np.asarray(points)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise PriorlabError(f"field query points must have shape (M, 3), got {arr.shape}; pass xyz only")
        if arr.dtype.kind != "f":
            raise PriorlabError(f"field query points have dtype {arr.dtype}; convert to float")
        return field(arr.astype(np.float64) - centre)

    return query


def _all_truncated(truncate) -> str:
    reach = math.sqrt(truncate)
    return (
        f"degenerate fit: at the start every Chamfer term of the data loss is beyond the truncation "
        f"(squared distance >= truncate={truncate:g} m^2, i.e. {reach:.2f} m), so the loss is 0 "
        f"with zero gradient and nothing would be fitted; the clouds do not overlap within "
        f"{reach:.2f} m: put both in the same frame (compensate ego motion first), pass a larger "
        f"truncate= (m^2) or truncate=None, or use method 'fast' (its loss is not truncated)"
    )


def _zero_gradient(optimizer) -> bool:
    return all(p.grad is None or not bool(p.grad.any()) for g in optimizer.param_groups for p in g["params"])


def estimate_flow(
    pc1,
    pc2,
    method: str = "rigid",
    *,
    points: int | None = None,
    seed: int = 0,
    max_iters: int | None = None,
    lr: float | None = None,
    patience: int | None = None,
    min_delta: float | None = None,
    progress: bool = True,
    device="cpu",
    centre: bool = True,
    **options,
) -> FlowResult:
    """Estimate scene flow from ``pc1`` (N, 3) to ``pc2`` (M, 3) by run-time optimisation.

    ``method``: ``"nsfp"``, ``"fast"``, ``"free"`` or ``"rigid"`` (whose options are those of
    :func:`priorlab.sceneflow.rigid.rigid_flow`; the loop arguments below do not apply to it).
    ``points``: fit on that many randomly sampled
    (seeded) points of each cloud, then evaluate the fitted field at every point of ``pc1`` (for
    ``"free"``, unfitted points take the flow of their nearest fitted point); ``None`` fits on all
    points. ``max_iters``, ``lr``, ``patience``, ``min_delta``: ``None`` means the method's official
    default (see :func:`defaults`; nsfp: 5000 / 8e-3 / 100 / 1e-4, fast: 5000 / 8e-3 / 10 / 1e-3,
    free: 5000 / 8e-3 / 100 / 1e-4). ``progress=False`` hides the progress bar. ``centre``: fit on
    clouds centred on the fitted ``pc1`` points' mean (default; see the module docstring); ``False``
    fits raw coordinates as the official code does for sensor-frame sweeps. Points may be float32 or
    float64; keep float64 for coordinates far from the origin.

    ``options`` (per method; unknown names are an error): ``hidden``, ``layers``, ``activation``,
    ``init`` ("torch"/"xavier"), ``weight_decay``, ``truncate`` (Chamfer threshold in m^2, nsfp/free),
    ``backward`` (cycle net, nsfp), ``voxel_size``, ``max_grid_bytes``, ``optimizer`` ("adam"/"sgd"),
    ``momentum`` (fast, sgd only); for all: ``callback(iteration, loss)`` called every iteration, and
    ``num_threads`` (torch threads for this call only; restored afterwards).
    """
    t_start = time.perf_counter()
    if method not in _DEFAULTS:
        raise did_you_mean(method, METHODS, "scene-flow method")
    if method == "rigid":
        given = [k for k, v in dict(points=points, max_iters=max_iters, lr=lr, patience=patience,
                                    min_delta=min_delta).items() if v is not None]
        if given:
            raise PriorlabError(f"{', '.join(given)} apply to the optimised methods {OPTIMISED}; "
                                "'rigid' uses every point and has no optimiser")
        rigid_options = {k: v for k, v in options.items() if k not in _COMMON_OPTIONS}  # no threads/loop
        return estimate_rigid(pc1, pc2, seed=seed, **rigid_options)
    defaults_m = _DEFAULTS[method]
    allowed = set(defaults_m) - set(_LOOP_KEYS) | set(_COMMON_OPTIONS)
    for k in options:
        if k not in allowed:
            raise did_you_mean(k, sorted(allowed), f"option for method {method!r}")
    opts = {k: v for k, v in defaults_m.items() if k not in _LOOP_KEYS}
    opts.update({k: v for k, v in options.items() if k not in _COMMON_OPTIONS})
    callback = options.get("callback")
    if callback is not None and not callable(callback):
        raise PriorlabError("callback must be callable as callback(iteration, loss)")

    p1 = check_points(pc1, "pc1", min_points=2, exact3=True)
    p2 = check_points(pc2, "pc2", min_points=2, exact3=True)
    max_iters = _positive_int(defaults_m["max_iters"] if max_iters is None else max_iters, "max_iters")
    lr = _nonneg_float(defaults_m["lr"] if lr is None else lr, "lr", strict=True)
    patience = _positive_int(defaults_m["patience"] if patience is None else patience, "patience", minimum=0)
    min_delta = _nonneg_float(defaults_m["min_delta"] if min_delta is None else min_delta, "min_delta")
    seed = _positive_int(seed, "seed", minimum=0)
    if points is not None:
        points = _positive_int(points, "points", minimum=2)
    if "truncate" in opts and opts["truncate"] is not None:
        opts["truncate"] = _nonneg_float(opts["truncate"], "truncate", strict=True)
    if "weight_decay" in opts:
        opts["weight_decay"] = _nonneg_float(opts["weight_decay"], "weight_decay")
    if "voxel_size" in opts:
        opts["voxel_size"] = _nonneg_float(opts["voxel_size"], "voxel_size", strict=True)
    if "max_grid_bytes" in opts:
        opts["max_grid_bytes"] = _positive_int(opts["max_grid_bytes"], "max_grid_bytes")
    if "momentum" in opts:
        opts["momentum"] = _nonneg_float(opts["momentum"], "momentum")
    if not isinstance(centre, bool):
        raise PriorlabError(f"centre must be True or False, got {centre!r}")
    dev = _device(device)
    _warn_if_coarse(p1, "pc1")
    _warn_if_coarse(p2, "pc2")

    if points is not None:
        idx1 = subsample(p1, points, seed=seed)
        idx2 = subsample(p2, points, seed=seed + 1)
    else:
        idx1 = np.arange(len(p1))
        idx2 = np.arange(len(p2))
    # centre in float64, then cast: float32 keeps ~0.1 mm at 1 km from the centre, not at 1e6 m raw
    origin = p1[idx1].astype(np.float64).mean(0) if centre else np.zeros(3)
    p1 = np.ascontiguousarray(p1.astype(np.float64) - origin, dtype=np.float32)
    p2 = np.ascontiguousarray(p2.astype(np.float64) - origin, dtype=np.float32)
    fit1 = torch.from_numpy(p1[idx1]).to(dev)
    fit2 = torch.from_numpy(p2[idx2]).to(dev)

    with _threads(options.get("num_threads")):
        t_setup = time.perf_counter()
        if method == "nsfp":
            problem = NSFPProblem(fit1, fit2, opts, lr, seed, dev)
        elif method == "fast":
            problem = FastProblem(fit1, fit2, opts, lr, seed, dev)
        else:
            problem = _FreeProblem(fit1, fit2, opts, lr, seed, dev)

        history: list[float] = []
        best_loss = math.inf
        best_state = None
        best_it = -1
        stop_reason = "max_iters"
        interrupted = False
        stopper = _EarlyStopping(patience, min_delta)
        kept_start = None
        bar = _progress_bar(
            total=max_iters, desc=f"scene flow ({method})", disable=None if progress else True
        )
        opt = problem.optimizer
        t_loop = time.perf_counter()
        try:
            for it in range(max_iters):
                opt.zero_grad(set_to_none=True)
                loss = problem.loss()
                value = float(loss.detach())
                history.append(value)
                kept = getattr(problem, "kept_share", None)
                if it == 0:
                    kept_start = kept
                    if kept == 0:
                        raise PriorlabError(_all_truncated(opts["truncate"]))
                    if kept is not None and kept < _FEW_KEPT:
                        warnings.warn(
                            f"nearly degenerate fit: only {100 * kept:.2g} % of the Chamfer terms "
                            f"are "
                            f"within the truncation at the start; the clouds barely overlap (check "
                            f"they are in the same frame)",
                            DegenerateFitWarning,
                            stacklevel=2,
                        )
                elif kept == 0:
                    stop_reason = "degenerate"
                    warnings.warn(
                        f"degenerate fit: at iteration {it} every Chamfer term of the data loss "
                        f"went beyond the truncation (loss 0 means nothing there); stopped and "
                        f"returned the "
                        f"best earlier iterate ({best_it})",
                        DegenerateFitWarning,
                        stacklevel=2,
                    )
                    break
                if value <= best_loss:
                    best_loss = value
                    best_state = problem.snapshot()
                    best_it = it
                if callback is not None:
                    callback(it, value)
                if stopper.step(value):
                    stop_reason = "nan" if math.isnan(value) else "early_stopping"
                    break
                loss.backward()
                if it == 0 and value > 0 and _zero_gradient(opt):
                    raise PriorlabError(
                        f"degenerate fit: the loss is {value:.4g} at the start but its "
                        f"gradient is exactly zero, so nothing would be fitted; check that "
                        f"the clouds overlap "
                        f"and are in the same frame"
                    )
                opt.step()
                bar.update(1)
                if it % 25 == 0:
                    bar.set_postfix(loss=f"{value:.4g}", refresh=False)
        except KeyboardInterrupt:
            interrupted = True
            stop_reason = "interrupted"
        finally:
            bar.close()

        t_eval = time.perf_counter()
        if best_state is None:  # interrupted before the first loss, or only NaN losses
            best_state = problem.snapshot()
            best_loss = math.nan
        fitted_field = problem.field(best_state)  # takes centred points
        fld = _world_field(fitted_field, origin)
        if method == "free":
            fitted = best_state.cpu().numpy().astype(np.float32)
            if len(idx1) == len(p1):
                flow = fitted
            else:
                nn_idx = KDIndex(torch.from_numpy(p1[idx1])).query_indices(torch.from_numpy(p1)).numpy()
                flow = fitted[nn_idx]
                flow[idx1] = fitted
        else:
            flow = fitted_field(p1)
    t_end = time.perf_counter()
    info = {
        "fit_points": (len(idx1), len(idx2)),
        "fit_indices": idx1,
        "stop_reason": stop_reason,
        "device": str(dev),
        "centre": origin,
        "kept_share_start": kept_start,
        "setup_s": t_loop - t_setup,
        "loop_s": t_eval - t_loop,
        "eval_s": t_end - t_eval,
    }
    if hasattr(problem, "info"):
        info.update(problem.info())
    return FlowResult(
        flow=np.ascontiguousarray(flow, dtype=np.float32),
        iterations=len(history),
        time_s=time.perf_counter() - t_start,
        final_loss=float(best_loss),
        method=method,
        loss_history=history,
        field=fld,
        interrupted=interrupted,
        best_iteration=best_it,
        info=info,
    )
