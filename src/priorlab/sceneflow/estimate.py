"""One entry point for run-time-optimised scene flow: :func:`estimate_flow`.

Methods:

* ``"nsfp"`` -- Neural Scene Flow Prior (see :mod:`priorlab.sceneflow.nsfp`): coordinate MLP + cycle
  MLP, truncated Chamfer, Adam.
* ``"fast"`` -- Fast Neural Scene Flow (see :mod:`priorlab.sceneflow.fast`): the same MLP trained on a
  voxel-grid distance-transform loss, SGD, no cycle net.
* ``"free"`` -- no prior: one free 3-vector per point (initialised at zero), optimised directly with
  the same truncated Chamfer (forward term only) by Adam. This is the baseline the NSFP paper argues
  against: nothing couples neighbouring points, so each point just slides to its nearest neighbour.

All three share one optimisation loop: the loss of the current parameters is evaluated, the
lowest-loss iterate is remembered, an optional ``callback(iteration, loss)`` is called, early
stopping is checked (NSFP's rule: stop after ``patience`` consecutive iterations without the loss
going below ``best - min_delta``; ``patience=0`` disables it; NaN stops), then a gradient step is
taken. Pressing Ctrl-C (``KeyboardInterrupt``) inside the loop ends it early and returns the best
iterate so far with ``interrupted=True``.
"""

from __future__ import annotations

import contextlib
import math
import time
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

__all__ = ["FlowResult", "estimate_flow", "METHODS", "FREE_DEFAULTS", "defaults"]

FREE_DEFAULTS = dict(lr=8e-3, max_iters=5000, patience=100, min_delta=1e-4, weight_decay=0.0, truncate=2.0)
_DEFAULTS = {"nsfp": NSFP_DEFAULTS, "fast": FAST_DEFAULTS, "free": FREE_DEFAULTS}
METHODS = tuple(_DEFAULTS)
_LOOP_KEYS = ("lr", "max_iters", "patience", "min_delta")
_COMMON_OPTIONS = ("callback", "num_threads")


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
    "early_stopping", "nan", "interrupted"), ``setup_s`` (building nets / distance grid), ``loop_s``
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

    def loss(self) -> torch.Tensor:
        return _chamfer(self.pc1 + self.flow, self.pc2, self.truncate, q_index=self.idx_pc2)

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
        raise PriorlabError(f"{name} must be a {'positive' if strict else 'non-negative'} finite number, got {v!r}")
    return x


def estimate_flow(pc1, pc2, method: str = "nsfp", *, points: int | None = None, seed: int = 0,
                  max_iters: int | None = None, lr: float | None = None, patience: int | None = None,
                  min_delta: float | None = None, progress: bool = True, device="cpu", **options) -> FlowResult:
    """Estimate scene flow from ``pc1`` (N, 3) to ``pc2`` (M, 3) by run-time optimisation.

    ``method``: ``"nsfp"``, ``"fast"`` or ``"free"``. ``points``: fit on that many randomly sampled
    (seeded) points of each cloud, then evaluate the fitted field at every point of ``pc1`` (for
    ``"free"``, unfitted points take the flow of their nearest fitted point); ``None`` fits on all
    points. ``max_iters``, ``lr``, ``patience``, ``min_delta``: ``None`` means the method's official
    default (see :func:`defaults`; nsfp: 5000 / 8e-3 / 100 / 1e-4, fast: 5000 / 8e-3 / 10 / 1e-3,
    free: 5000 / 8e-3 / 100 / 1e-4). ``progress=False`` hides the progress bar.

    ``options`` (per method; unknown names are an error): ``hidden``, ``layers``, ``activation``,
    ``init`` ("torch"/"xavier"), ``weight_decay``, ``truncate`` (Chamfer threshold in m^2, nsfp/free),
    ``backward`` (cycle net, nsfp), ``voxel_size``, ``max_grid_bytes``, ``optimizer`` ("sgd"/"adam"),
    ``momentum`` (fast); for all: ``callback(iteration, loss)`` called every iteration, and
    ``num_threads`` (torch threads for this call only; restored afterwards).
    """
    t_start = time.perf_counter()
    if method not in _DEFAULTS:
        raise did_you_mean(method, METHODS, "scene-flow method")
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
    dev = _device(device)

    p1 = np.ascontiguousarray(p1, dtype=np.float32)
    p2 = np.ascontiguousarray(p2, dtype=np.float32)
    if points is not None:
        idx1 = subsample(p1, points, seed=seed)
        idx2 = subsample(p2, points, seed=seed + 1)
    else:
        idx1 = np.arange(len(p1))
        idx2 = np.arange(len(p2))
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
        bar = _progress_bar(total=max_iters, desc=f"scene flow ({method})", disable=None if progress else True)
        opt = problem.optimizer
        t_loop = time.perf_counter()
        try:
            for it in range(max_iters):
                opt.zero_grad(set_to_none=True)
                loss = problem.loss()
                value = float(loss.detach())
                history.append(value)
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
        fld = problem.field(best_state)
        if method == "free":
            fitted = best_state.cpu().numpy().astype(np.float32)
            if len(idx1) == len(p1):
                flow = fitted
            else:
                nn_idx = KDIndex(torch.from_numpy(p1[idx1])).query_indices(torch.from_numpy(p1)).numpy()
                flow = fitted[nn_idx]
                flow[idx1] = fitted
        else:
            flow = fld(p1)
    t_end = time.perf_counter()
    info = {"fit_points": (len(idx1), len(idx2)), "fit_indices": idx1, "stop_reason": stop_reason, "device": str(dev),
            "setup_s": t_loop - t_setup, "loop_s": t_eval - t_loop, "eval_s": t_end - t_eval}
    if hasattr(problem, "info"):
        info.update(problem.info())
    return FlowResult(flow=np.ascontiguousarray(flow, dtype=np.float32), iterations=len(history),
                      time_s=time.perf_counter() - t_start, final_loss=float(best_loss), method=method,
                      loss_history=history, field=fld, interrupted=interrupted, best_iteration=best_it, info=info)
