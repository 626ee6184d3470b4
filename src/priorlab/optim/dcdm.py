"""DCDM: a network proposes search directions for a conjugate-direction linear solver.

Kaneda, Akar, Chen, Kala, Hyde, Teran, "A Deep Conjugate Direction Method for Iteratively
Solving Linear Systems", ICML 2023 (arXiv 2205.10763); official code ayano721/2023_DCDM.

For an SPD system ``A x = b`` (here the discrete Poisson equation on an n x n grid) a fully
convolutional network ``f`` maps a residual image to a direction ``q = f(r)`` that should
approximate ``A^{-1} r``. Training uses the paper's scale-invariant loss (its Eq. 8)

    L(q; b) = || b - A q (q^T b) / (q^T A q) ||^2,

the residual after the best step along ``q`` (invariant to ``q -> c q``, so the network only
has to get the direction right). At solve time (the paper's Algorithm 1) each new direction
is A-orthogonalised against the previous ``n_orth`` directions (2 in the paper) and used in a
conjugate-direction step with the exact line search ``alpha = p^T r / p^T A p``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_finite, check_number, check_tensor

_STENCIL = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


def poisson_matrix(n: int) -> sp.csr_matrix:
    """The 5-point Dirichlet Laplacian on an n x n grid (row-major), unscaled: 4 on the diagonal.
    Same matrix as ``pyamg.gallery.poisson((n, n))``."""
    n = check_number(n, "n", who="poisson_matrix", low=2, integer=True)
    line = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])
    eye = sp.identity(n)
    return (sp.kron(eye, line) + sp.kron(line, eye)).tocsr()


def poisson_apply(q: torch.Tensor) -> torch.Tensor:
    """``A q`` for a batch of grid images ``q`` of shape (batch, 1, n, n), as a convolution
    (zero padding = homogeneous Dirichlet boundary): equals ``poisson_matrix(n) @ q.flatten()``."""
    check_tensor(q, "q", who="poisson_apply", ndim=4, dtype="float")
    return F.conv2d(q, _STENCIL.to(q).view(1, 1, 3, 3), padding=1)


def dcdm_loss(q: torch.Tensor, b: torch.Tensor,
              apply_a: Callable[[torch.Tensor], torch.Tensor] = poisson_apply) -> torch.Tensor:
    """The paper's scale-invariant loss, mean over the batch: ||b - A q (q.b)/(q.A q)||^2.

    ``q`` and ``b`` have the same shape (batch, ...); ``apply_a`` maps a batch of ``q`` to
    ``A q`` (default: the 2-D Poisson stencil on (batch, 1, n, n) images).
    """
    check_tensor(q, "q", who="dcdm_loss", min_ndim=2, dtype="float", non_empty=True, finite=True)
    check_tensor(b, "b", who="dcdm_loss", shape=tuple(q.shape), dtype="float", finite=True)
    if not callable(apply_a):
        raise PriorlabError(f"dcdm_loss: apply_a must be callable, got {type(apply_a).__name__}")
    aq = apply_a(q)
    if aq.shape != q.shape:
        raise PriorlabError(f"dcdm_loss: apply_a must keep the shape {tuple(q.shape)}, "
                            f"got {tuple(aq.shape)}")
    q_flat, b_flat, aq_flat = q.flatten(1), b.flatten(1), aq.flatten(1)
    curvature = (q_flat * aq_flat).sum(1)
    step = (q_flat * b_flat).sum(1) / curvature.clamp_min(torch.finfo(q.dtype).tiny)
    loss = (b_flat - aq_flat * step[:, None]).pow(2).sum(1).mean()
    if not torch.isfinite(loss):
        raise PriorlabError(f"dcdm_loss: the loss overflows {loss.dtype} (q up to "
                            f"{q.abs().max().item():.3g}, b up to {b.abs().max().item():.3g}); "
                            "rescale q and b")
    return loss


class DCDMLoss(nn.Module):
    """:func:`dcdm_loss` as a ``loss_fn(q, b)`` for a training loop."""

    def __init__(self, apply_a: Callable[[torch.Tensor], torch.Tensor] = poisson_apply):
        super().__init__()
        if not callable(apply_a):
            raise PriorlabError(f"DCDMLoss: apply_a must be callable, got {type(apply_a).__name__}")
        self.apply_a = apply_a

    def forward(self, q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return dcdm_loss(q, b, self.apply_a)


class _ResidualConv(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=1)
        self.second = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + F.relu(self.second(F.relu(self.first(x))))


class DirectionNet(nn.Module):
    """Fully convolutional direction network (the official model's shape, in 2-D and smaller):
    a linear 3x3 lift to ``channels``, residual conv blocks at full resolution, ``levels``
    average-pool levels each with residual blocks, nearest upsampling with skip additions, and
    a linear 1x1 head. Being fully convolutional, weights trained on 32^2 apply to 64^2; the
    grid side must be divisible by 2**levels."""

    def __init__(self, channels: int = 16, levels: int = 4, blocks: int = 2):
        super().__init__()
        self.channels = check_number(channels, "channels", who="DirectionNet", low=1, integer=True)
        self.levels = check_number(levels, "levels", who="DirectionNet", low=0, integer=True)
        blocks = check_number(blocks, "blocks", who="DirectionNet", low=1, integer=True)
        self.lift = nn.Conv2d(1, channels, 3, padding=1)
        self.down = nn.ModuleList(nn.Sequential(*[_ResidualConv(channels) for _ in range(blocks)])
                                  for _ in range(levels + 1))
        self.up = nn.ModuleList(_ResidualConv(channels) for _ in range(levels))
        self.head = nn.Conv2d(channels, 1, 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        check_tensor(r, "r", who="DirectionNet", ndim=4, dtype="float")
        side = 2 ** self.levels
        if r.shape[1] != 1 or r.shape[2] % side or r.shape[3] % side:
            raise PriorlabError(f"DirectionNet: input must be (batch, 1, H, W) with H and W "
                                f"divisible by {side}, got {tuple(r.shape)}")
        x = self.down[0](self.lift(r))
        skips = []
        for level in range(1, self.levels + 1):
            skips.append(x)
            x = self.down[level](F.avg_pool2d(x, 2))
        for level in reversed(range(self.levels)):
            x = self.up[level](F.interpolate(x, scale_factor=2.0, mode="nearest") + skips[level])
        return self.head(x)


class SolveResult(NamedTuple):
    x: np.ndarray
    iterations: int
    residuals: list[float]  # relative residual ||b - A x|| / ||b||, starting with the initial one
    converged: bool  # the last relative residual is <= tol


def _check_system(A, b, who: str):
    if not (sp.issparse(A) or isinstance(A, np.ndarray)) or A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise PriorlabError(f"{who}: A must be a square scipy sparse matrix or numpy array, "
                            f"got {type(A).__name__} {getattr(A, 'shape', '')}")
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (A.shape[0],):
        raise PriorlabError(f"{who}: b must be a vector of length {A.shape[0]}, got shape {b.shape}")
    if not np.isfinite(b).all():
        raise PriorlabError(f"{who}: b contains NaN or infinite values")
    return b


def _check_controls(who: str, tol, max_iter):
    tol = check_number(tol, "tol", who=who, low=0, low_open=True, high=1, high_open=True)
    max_iter = check_number(max_iter, "max_iter", who=who, low=1, integer=True)
    return tol, max_iter


def dcdm_solve(A, b, model: Callable[[torch.Tensor], torch.Tensor], tol: float = 1e-6,
               max_iter: int = 1000, n_orth: int = 2, shape: tuple[int, int] | None = None
               ) -> SolveResult:
    """Solve ``A x = b`` (A SPD) from ``x = 0`` with network-proposed, A-orthogonalised directions.

    Each iteration: ``q = model(r / ||r||)`` (r reshaped to a (1, 1, *shape) image, square by
    default), ``p = q - sum_j (q.A p_j / p_j.A p_j) p_j`` over the last ``n_orth`` directions,
    ``alpha = p.r / p.A p``, ``x += alpha p``, ``r -= alpha A p``, until ``||r|| <= tol ||b||``.
    With the identity as ``model`` and ``n_orth >= 1`` this is CG (n_orth = 0: steepest
    descent). The network runs in float32 under ``torch.no_grad``; the iteration in float64.
    """
    who = "dcdm_solve"
    b = _check_system(A, b, who)
    tol, max_iter = _check_controls(who, tol, max_iter)
    n_orth = check_number(n_orth, "n_orth", who=who, low=0, integer=True)
    if not callable(model):
        raise PriorlabError(f"{who}: model must be callable (r image -> direction image)")
    if shape is None:
        side = math.isqrt(b.size)
        if side * side != b.size:
            raise PriorlabError(f"{who}: len(b) = {b.size} is not a square; pass shape=(H, W)")
        shape = (side, side)
    if len(shape) != 2 or shape[0] * shape[1] != b.size:
        raise PriorlabError(f"{who}: shape {shape} does not hold {b.size} unknowns")
    x = np.zeros_like(b)
    r = b.copy()
    norm_b = float(np.linalg.norm(b))
    history = [1.0]
    if norm_b == 0.0:
        return SolveResult(x, 0, [0.0], True)
    previous: list[tuple[np.ndarray, np.ndarray, float]] = []  # (p, A p, p.A p)
    iterations = 0
    while history[-1] > tol and iterations < max_iter:
        image = torch.from_numpy(r / np.linalg.norm(r)).float().view(1, 1, *shape)
        with torch.no_grad():
            q_t = model(image)
        if not isinstance(q_t, torch.Tensor) or q_t.numel() != b.size:
            raise PriorlabError(f"{who}: model must return a tensor with {b.size} entries")
        check_finite(q_t, "model output", who=who)
        p = q_t.detach().reshape(-1).double().numpy().copy()
        for p_j, ap_j, curv_j in previous:
            p -= (p @ ap_j) / curv_j * p_j
        ap = A @ p
        curvature = float(p @ ap)
        if not curvature > 0:  # zero direction (or A not SPD): no progress is possible
            break
        alpha = float(p @ r) / curvature
        x += alpha * p
        r -= alpha * ap
        iterations += 1
        history.append(float(np.linalg.norm(r)) / norm_b)
        if n_orth:
            previous = (previous + [(p, ap, curvature)])[-n_orth:]
    return SolveResult(x, iterations, history, history[-1] <= tol)


def pcg_solve(A, b, precondition: Callable[[np.ndarray], np.ndarray] | None = None,
              tol: float = 1e-6, max_iter: int = 1000) -> SolveResult:
    """Preconditioned CG from ``x = 0`` (``precondition(r)`` ~ ``M^{-1} r``; None: plain CG),
    stopping on the same relative residual ``||b - A x|| / ||b|| <= tol`` as :func:`dcdm_solve`
    and written as the same Python-level loop, so iterations and wall time compare like for like."""
    who = "pcg_solve"
    b = _check_system(A, b, who)
    tol, max_iter = _check_controls(who, tol, max_iter)
    x = np.zeros_like(b)
    r = b.copy()
    norm_b = float(np.linalg.norm(b))
    if norm_b == 0.0:
        return SolveResult(x, 0, [0.0], True)
    z = r if precondition is None else precondition(r)
    p = z.copy()
    rz = float(r @ z)
    history = [1.0]
    iterations = 0
    while history[-1] > tol and iterations < max_iter:
        ap = A @ p
        alpha = rz / float(p @ ap)
        x += alpha * p
        r -= alpha * ap
        iterations += 1
        history.append(float(np.linalg.norm(r)) / norm_b)
        z = r if precondition is None else precondition(r)
        rz, rz_old = float(r @ z), rz
        p = z + (rz / rz_old) * p
    return SolveResult(x, iterations, history, history[-1] <= tol)
