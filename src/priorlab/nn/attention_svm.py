"""Single-head attention and its max-margin token-selection SVM (Att-SVM).

Tarzanagh, Li, Thrampoulidis & Oymak, "Transformers as Support Vector Machines", 2023,
arXiv:2308.16898 (official code: umich-sota/TF-as-SVM, ``base.py``).

The model scores every token ``x_t`` of a sequence ``X`` against a query ``z`` and outputs a
linear head on the attention-weighted average::

    f(X, z) = v^T X^T softmax(X W z)          (W-parametrisation)
    W = K Q^T                                  ((K, Q)-parametrisation)

The paper shows that gradient descent on ``W`` (logistic loss, linear head ``v`` fixed) diverges
in norm but converges in direction to the solution of the *Att-SVM*, which separates the
selected token ``x_{i,opt_i}`` of every sequence from its other tokens with unit margin::

    min ||W||   subject to   (x_{i,opt_i} - x_{i,t})^T W z_i >= 1   for all i, t != opt_i

with the Frobenius norm for the W-parametrisation and the nuclear norm for (K, Q).
:func:`att_svm` solves it: the Frobenius problem exactly by Lawson & Hanson's reduction to
non-negative least squares (SciPy), the nuclear-norm one with cvxpy (optional dependency:
``pip install priorlab[svm]``); the official ``W_svm_solver`` uses cvxpy for both.
:class:`NormalizedGD` is the normalised gradient step of the official experiments,
``p <- p - lr * g / (||g||_F + eps)`` per parameter tensor.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import optimize
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.optim.checks import (check_loaded_state_dict, check_nonfinite_policy, handle_nonfinite,
                                   nonfinite_gradients)
from priorlab.validation import check_number, check_tensor, describe

PARAMETRISATIONS = ("W", "KQ")
NORMS = ("fro", "nuc")
# The official experiments run in float64: the softmax saturates as ||W|| grows.
DEFAULT_DTYPE = torch.float64
# Solutions may violate a unit-margin constraint by at most this much before we call them wrong.
FEASIBILITY_TOL = 1e-5


def _check_tensor(x, name: str, ndim: int, shape_hint: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise PriorlabError(f"{name} must be a torch.Tensor of shape {shape_hint}, got "
                            f"{type(x).__name__}")
    if x.ndim != ndim:
        raise PriorlabError(f"{name} must have shape {shape_hint}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise PriorlabError(f"{name} must be floating point, got {x.dtype}; cast it with .double()")
    if not bool(torch.isfinite(x).all()):
        raise PriorlabError(f"{name} contains NaN or infinite values")
    return x


def _queries(X: torch.Tensor, z) -> torch.Tensor:
    """The query of each sequence: ``z`` (cross-attention) or, when None, the last token."""
    if z is None:
        return X[:, -1]
    z = _check_tensor(z, "z", 2, "(n, d)")
    if z.shape != (X.shape[0], X.shape[2]):
        raise PriorlabError(f"z must have shape (n, d) = {(X.shape[0], X.shape[2])} to match X "
                            f"{tuple(X.shape)}, got {tuple(z.shape)}")
    return z


class SingleHeadAttention(nn.Module):
    """``f(X, z) = v^T X^T softmax(X W z)`` with ``W`` trained directly or as ``K Q^T``.

    Args:
        dim: token dimension ``d``.
        parametrisation: ``"W"`` (one ``d x d`` matrix) or ``"KQ"`` (``K, Q`` of shape
            ``d x key_dim``; the paper's (K, Q)-parametrisation).
        key_dim: width of ``K`` and ``Q`` (default ``dim``, as in the official code).
        head: the fixed linear prediction head ``v`` (default: a random unit vector). The paper
            trains only the attention weights; ``v`` is a buffer, not a parameter.
        dtype: parameter dtype; float64 by default because the softmax saturates.

    Weights start uniform in ``+-1/sqrt(dim)`` (the default of the official ``nn.Linear``).
    ``forward(X, z)`` takes ``X`` of shape ``(n, T, d)`` and queries ``z`` of shape ``(n, d)``
    (``None`` = self-attention from the last token) and returns ``(n,)`` outputs.
    """

    def __init__(self, dim: int, parametrisation: str = "W", key_dim: int | None = None,
                 head: torch.Tensor | None = None, dtype: torch.dtype = DEFAULT_DTYPE):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise PriorlabError(f"dim must be a positive integer, got {dim!r}")
        if parametrisation not in PARAMETRISATIONS:
            raise PriorlabError(f"parametrisation must be one of {PARAMETRISATIONS}, got "
                                f"{parametrisation!r}")
        key_dim = dim if key_dim is None else key_dim
        if isinstance(key_dim, bool) or not isinstance(key_dim, int) or key_dim < 1:
            raise PriorlabError(f"key_dim must be a positive integer, got {key_dim!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise PriorlabError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.dim, self.parametrisation = dim, parametrisation
        bound = 1.0 / math.sqrt(dim)

        def uniform(*shape):
            return nn.Parameter(torch.empty(*shape, dtype=dtype).uniform_(-bound, bound))

        if parametrisation == "W":
            self.W = uniform(dim, dim)
        else:
            self.K = uniform(dim, key_dim)
            self.Q = uniform(dim, key_dim)
        if head is None:
            head = torch.randn(dim, dtype=dtype)
            head = head / head.norm()
        head = _check_tensor(head, "head", 1, f"({dim},)")
        if head.shape[0] != dim:
            raise PriorlabError(f"head must have shape ({dim},), got {tuple(head.shape)}")
        self.register_buffer("v", head.detach().to(dtype).clone())

    def combined_weight(self) -> torch.Tensor:
        """The ``d x d`` attention matrix ``W`` (``K Q^T`` under the (K, Q)-parametrisation)."""
        return self.W if self.parametrisation == "W" else self.K @ self.Q.T

    def _inputs(self, X, z) -> tuple[torch.Tensor, torch.Tensor]:
        X = _check_tensor(X, "X", 3, "(n, T, d)")
        if X.shape[2] != self.dim:
            raise PriorlabError(f"X has token dimension {X.shape[2]} but the model was built for "
                                f"dim={self.dim}")
        dtype = self.v.dtype
        return X.to(dtype), _queries(X, z).to(dtype)

    def attention(self, X: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention over the tokens, shape ``(n, T)``."""
        return torch.softmax(self._scores(*self._inputs(X, z)), dim=-1)

    def _scores(self, X: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # x_t^T W z = x_t . (W z); broadcasting beats einsum/bmm for these tiny shapes on CPU
        return (X * (z @ self.combined_weight().T).unsqueeze(1)).sum(-1)

    def forward(self, X: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        X, z = self._inputs(X, z)
        attention = torch.softmax(self._scores(X, z), dim=-1)
        return (attention * (X * self.v).sum(-1)).sum(-1)


def _constraint_rows(X: np.ndarray, z: np.ndarray, opt_index: np.ndarray):
    """Differences ``x_opt - x_t`` and their queries, one row per constraint."""
    n, T, _ = X.shape
    diffs, queries = [], []
    for i in range(n):
        for t in range(T):
            if t != opt_index[i]:
                diffs.append(X[i, opt_index[i]] - X[i, t])
                queries.append(z[i])
    return np.asarray(diffs), np.asarray(queries)


def _solve_fro(diffs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Least-distance programme ``min ||w|| s.t. A w >= 1`` by Lawson & Hanson's reduction to NNLS.

    (Solving Least Squares Problems, 1974, ch. 23): with ``E = [A^T; 1^T]`` and ``f = e_last``,
    the NNLS solution ``u`` gives the residual ``r = E u - f`` and ``w = -r[:-1] / r[-1]``;
    ``r = 0`` means the constraints are infeasible. Exact up to rounding, no tolerances to tune.
    """
    d = diffs.shape[1]
    # Row k of A is vec(outer(diff_k, query_k)): constraint k reads A[k] @ vec(W) >= 1.
    A = np.einsum("ka,kb->kab", diffs, queries).reshape(len(diffs), d * d)
    E = np.vstack([A.T, np.ones((1, len(A)))])
    f = np.zeros(d * d + 1)
    f[-1] = 1.0
    u, _ = optimize.nnls(E, f, maxiter=50 * E.shape[1])
    residual = E @ u - f
    if residual[-1] > -1e-12:
        raise PriorlabError("att_svm: no W separates the selected tokens with unit margin (the "
                            "Frobenius SVM is infeasible); check opt_index")
    return (-residual[:-1] / residual[-1]).reshape(d, d)


def _solve_nuc(diffs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    try:
        import cvxpy as cp
    except ImportError as e:
        raise PriorlabError("att_svm(norm='nuc') needs cvxpy: pip install 'priorlab[svm]' "
                            "(or pip install cvxpy); norm='fro' works without it") from e
    d = diffs.shape[1]
    W = cp.Variable((d, d))
    margins = cp.sum(cp.multiply(diffs @ W, queries), axis=1)
    problem = cp.Problem(cp.Minimize(cp.normNuc(W)), [margins >= 1])
    try:
        problem.solve()
    except cp.error.SolverError as e:
        raise PriorlabError(f"att_svm: the nuclear-norm SVM solver failed ({e})") from e
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or W.value is None:
        raise PriorlabError(f"att_svm: the nuclear-norm SVM is {problem.status}; the constraints "
                            "may be infeasible for this opt_index")
    return np.asarray(W.value)


def att_svm(X: torch.Tensor, z: torch.Tensor | None, opt_index, norm: str = "fro") -> torch.Tensor:
    """Solve the Att-SVM: the min-norm ``W`` with ``(x_{i,opt_i} - x_{i,t})^T W z_i >= 1``.

    Args:
        X: tokens, shape ``(n, T, d)``.
        z: queries, shape ``(n, d)``; ``None`` uses each sequence's last token (self-attention).
        opt_index: the token to select in each sequence, ``n`` integers in ``[0, T)``.
        norm: ``"fro"`` (the W-parametrisation's bias) or ``"nuc"`` (the (K, Q) one; needs cvxpy).

    Returns the ``d x d`` float64 solution ``W^mm``. Raises PriorlabError when the selected
    tokens cannot be separated (infeasible problem).
    """
    if norm not in NORMS:
        raise PriorlabError(f"norm must be one of {NORMS}, got {norm!r}")
    X = _check_tensor(X, "X", 3, "(n, T, d)")
    if X.shape[1] < 2:
        raise PriorlabError(f"att_svm needs at least two tokens per sequence, got T={X.shape[1]}")
    z = _queries(X, z)
    opt = torch.as_tensor(opt_index)
    if opt.is_floating_point() or opt.shape != (X.shape[0],):
        raise PriorlabError(f"opt_index must hold one integer token index per sequence "
                            f"({X.shape[0]}), got shape {tuple(opt.shape)} and dtype {opt.dtype}")
    if bool(((opt < 0) | (opt >= X.shape[1])).any()):
        raise PriorlabError(f"opt_index values must lie in [0, {X.shape[1]}), got "
                            f"{opt.tolist()}")
    diffs, queries = _constraint_rows(X.detach().double().cpu().numpy(),
                                      z.detach().double().cpu().numpy(), opt.cpu().numpy())
    solution = _solve_fro(diffs, queries) if norm == "fro" else _solve_nuc(diffs, queries)
    worst = float(np.min(np.sum((diffs @ solution) * queries, axis=1)))
    if worst < 1 - FEASIBILITY_TOL * max(1.0, float(np.abs(solution).max())):
        raise PriorlabError(f"att_svm: no W separates the selected tokens with unit margin (best "
                            f"found reaches margin {worst:.6g}); check opt_index")
    return torch.from_numpy(solution)


def _power_of_two_scaled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x * 2^-e, e)`` with ``2^e`` just above ``x``'s largest magnitude: exact, so norms and
    inner products of the scaled tensor neither overflow nor underflow, and ratios keep every bit."""
    _, exponent = torch.frexp(x.abs().max())
    return torch.ldexp(x, -exponent), exponent


def direction_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """``<a, b> / (||a|| ||b||)`` of two tensors of the same shape (the paper's "correlation")."""
    who = "direction_cosine"
    for name, x in (("a", a), ("b", b)):
        check_tensor(x, name, who=who, dtype="float", finite=True)
    if a.shape != b.shape:
        raise PriorlabError(f"{who}: a and b must have one shape, got {describe(a)} and {describe(b)}")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    for name, x in (("a", a), ("b", b)):
        if not bool(x.ne(0).any()):
            raise PriorlabError(f"{who}: {name} is zero (or empty) and has no direction")
    a, b = _power_of_two_scaled(a)[0], _power_of_two_scaled(b)[0]
    return float(a @ b) / float(a.norm() * b.norm())


def _check_group(group: dict) -> None:
    """The constructor's checks, for a new, added or loaded parameter group."""
    for name in ("lr", "eps"):
        check_number(group[name], name, who="NormalizedGD", low=0, low_open=True)
    check_nonfinite_policy(group["nonfinite"], "NormalizedGD")


def _gradient_norm(g: torch.Tensor) -> float:
    """``||g||_F``, also where squaring the entries overflows (float32 beyond ~1e19, which made
    the norm inf and the step a silent zero); identical to ``g.norm()`` otherwise."""
    if not g.numel():
        return 0.0
    scaled, exponent = _power_of_two_scaled(g)
    norm, exponent = torch.stack([scaled.norm().double(), exponent.double()]).tolist()  # one sync
    return math.ldexp(norm, int(exponent))


class NormalizedGD(torch.optim.Optimizer):
    """Normalised gradient descent: ``p <- p - lr * g / (||g||_F + eps)`` for each tensor ``p``.

    The step the official experiments use (README of umich-sota/TF-as-SVM) so that the
    attention weights keep growing at a steady rate; ``eps`` defaults to float64's epsilon.

    ``nonfinite``: a NaN or infinite gradient would turn the weights NaN, so by default
    (``"skip"``) such a step is skipped for its parameter group with a warning, leaving the
    weights as they were; ``"raise"`` raises PriorlabError (as :class:`priorlab.optim.Lion`).
    """

    def __init__(self, params, lr: float = 0.1, eps: float = float(np.finfo(np.float64).eps), *,
                 nonfinite: str = "skip"):
        defaults = {"lr": lr, "eps": eps, "nonfinite": nonfinite}
        _check_group(defaults)
        super().__init__(params, {"lr": float(lr), "eps": float(eps), "nonfinite": nonfinite})

    def add_param_group(self, param_group: dict) -> None:
        # checked before the group joins, so a rejected group leaves the optimizer unchanged
        _check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from :meth:`state_dict` with the constructor's checks; another optimiser's
        state or a corrupt one raises and leaves this one unchanged."""
        check_loaded_state_dict(state_dict, self, "NormalizedGD", _check_group)
        for index, entry in state_dict["state"].items():
            if entry:
                raise PriorlabError(f"NormalizedGD.load_state_dict: NormalizedGD keeps no state per "
                                    f"parameter, but parameter {index} has {sorted(entry)}; is it "
                                    "another optimizer's state?")
        super().load_state_dict(state_dict)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nonfinite", "skip")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            bad = nonfinite_gradients(params)
            if bad:
                # frames above: this step, torch's no_grad and step-hook wrappers, the caller
                handle_nonfinite(bad, group["nonfinite"], "NormalizedGD", stacklevel=5)
                continue
            for p in params:
                p.add_(p.grad, alpha=-group["lr"] / (_gradient_norm(p.grad) + group["eps"]))
        return loss
