"""Curvature of a loss: Hessian-vector products, the Hessian's trace and its top eigenvalue.

Everything here works on any ``nn.Module`` and loss, through double backpropagation (Pearlmutter's
trick: ``Hv = d/dθ <∇L(θ), v>``), without ever forming the Hessian unless asked for it:

- :func:`hvp`: one Hessian-vector product.
- :func:`hutchinson_trace`: ``Tr(H) ≈ mean_k z_kᵀ H z_k`` with Rademacher (or Gaussian) probes
  ``z_k`` (Hutchinson 1990); unbiased, with a standard error.
- :func:`top_eigenvalue`: the largest eigenvalue (the *sharpness*) by power iteration.
- :func:`hessian_matrix`: the exact Hessian, one HVP per coordinate, for small models and tests.

The loss is ``L = mean over all samples of loss_fn(model(x), y)``: ``batches`` are ``(inputs,
targets)`` pairs (a third element, such as sample indices, is ignored), ``loss_fn`` returns the
*mean* over its batch, and batches are weighted by their number of samples. Pass a few large
batches: their graphs are kept for the whole call so that repeated products do not redo the
forward pass (``low_memory=True`` recomputes them instead). The model is put in eval mode for the
measurement (dropout off, batch-norm statistics fixed) and restored afterwards. ``params`` selects
the parameters to differentiate: the model's parameters that require grad (default), or an
iterable of parameters or of their names from ``model.named_parameters()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean

Batches = Iterable | Callable[[], Iterable] | tuple


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of Tr(H): the mean of ``num_samples`` probes and its standard error."""

    trace: float
    std_error: float
    num_samples: int

    def __float__(self) -> float:
        return self.trace


def select_params(model: nn.Module, params=None) -> list[torch.Tensor]:
    """The parameters a curvature measurement differentiates (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    if params is None:
        chosen = [p for p in named.values() if p.requires_grad]
        if not chosen:
            raise PriorlabError("the model has no parameter that requires grad; nothing to "
                                "differentiate (unfreeze some, or pass params=...)")
        return chosen
    if isinstance(params, (torch.Tensor, str)):
        params = [params]
    chosen = []
    ids = {id(p) for p in named.values()}
    for item in params:
        if isinstance(item, str):
            if item not in named:
                raise did_you_mean(item, named, "parameter name")
            item = named[item]
        elif not isinstance(item, torch.Tensor) or id(item) not in ids:
            raise PriorlabError("params must be parameters of the model (or their names from "
                                f"model.named_parameters()), got a {type(item).__name__} that is not")
        if not item.requires_grad:
            raise PriorlabError("a selected parameter does not require grad; set requires_grad=True "
                                "or leave it out of params")
        chosen.append(item)
    if not chosen:
        raise PriorlabError("params is empty; select at least one parameter (or pass None for all)")
    if len({id(p) for p in chosen}) != len(chosen):
        raise PriorlabError("params lists the same parameter twice; list each once")
    return chosen


def as_batches(batches: Batches) -> list[tuple]:
    """``batches`` as a list of (inputs, targets[, ...]) tuples (one pair, an iterable, or a function)."""
    if isinstance(batches, tuple) and len(batches) in (2, 3) and isinstance(batches[0], torch.Tensor):
        batches = [batches]  # a single (inputs, targets) batch
    elif callable(batches):
        batches = batches()
    try:
        out = list(batches)
    except TypeError:
        raise PriorlabError(f"batches must be an (inputs, targets) pair, an iterable of such pairs "
                            f"or a function returning one, got {type(batches).__name__}") from None
    if not out:
        raise PriorlabError("batches is empty; pass at least one (inputs, targets) batch")
    for batch in out:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise PriorlabError("each batch must be an (inputs, targets) pair (optionally with a "
                                f"third element), got {type(batch).__name__}")
    return out


def _batch_size(batch) -> int:
    """Samples in a batch, from the targets' (else the inputs') leading dimension."""
    for part in (batch[1], batch[0]):
        if isinstance(part, torch.Tensor) and part.dim() > 0:
            return int(part.shape[0])
        if isinstance(part, (list, tuple)) and part:
            return len(part)
    raise PriorlabError("cannot tell how many samples a batch holds: its targets and inputs have "
                        "no leading dimension; pass tensors with one row per sample")


class _Curvature:
    """The Hessian of the size-weighted mean loss over ``batches`` as a linear operator."""

    def __init__(self, model, loss_fn, batches, params, low_memory: bool):
        if not callable(loss_fn):
            raise PriorlabError(f"loss_fn must be callable as loss_fn(outputs, targets), "
                                f"got {type(loss_fn).__name__}")
        self.model, self.loss_fn, self.low_memory = model, loss_fn, low_memory
        self.params = select_params(model, params)
        self.batches = as_batches(batches)
        sizes = [_batch_size(b) for b in self.batches]
        if min(sizes) < 1:
            raise PriorlabError("a batch has no samples; drop empty batches")
        total = sum(sizes)
        self.weights = [s / total for s in sizes]
        self.numel = sum(p.numel() for p in self.params)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self._grads: list | None = None

    def _batch_grads(self, batch, weight) -> tuple[torch.Tensor, ...]:
        inputs, targets = batch[0], batch[1]
        loss = self.loss_fn(self.model(inputs), targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise PriorlabError(f"loss_fn must return a scalar tensor (the batch mean), got {shape}; "
                                "use reduction='mean'")
        if not torch.isfinite(loss):
            raise PriorlabError(f"the loss is {float(loss.detach())} on a batch; "
                                "curvature is undefined there "
                                "(check the inputs and the model's state)")
        grads = torch.autograd.grad(loss * weight, self.params, create_graph=True, allow_unused=True)
        return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params))

    def _graphs(self):
        if self.low_memory:
            return (self._batch_grads(b, w) for b, w in zip(self.batches, self.weights))
        if self._grads is None:
            self._grads = [self._batch_grads(b, w) for b, w in zip(self.batches, self.weights)]
        return self._grads

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """H @ vector, both flat over the selected parameters."""
        pieces = self.unflatten(vector)
        out = torch.zeros(self.numel, device=self.device, dtype=self.dtype)
        for grads in self._graphs():
            # a gradient that does not depend on the parameters (a loss linear in them) has no
            # curvature; autograd refuses to differentiate it, so it is left out
            live = [(g, v) for g, v in zip(grads, pieces) if g.requires_grad]
            if not live:
                continue
            hv = torch.autograd.grad([g for g, _ in live], self.params,
                                     grad_outputs=[v for _, v in live], retain_graph=True,
                                     allow_unused=True)
            out += torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1).to(self.dtype)
                              for h, p in zip(hv, self.params)]).detach()
        if not torch.isfinite(out).all():
            raise PriorlabError("a Hessian-vector product is not finite; the loss surface overflows "
                                "at these parameters (try float64, or a smaller scale)")
        return out

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        pieces, start = [], 0
        for p in self.params:
            pieces.append(vector[start:start + p.numel()].view_as(p).to(p.dtype))
            start += p.numel()
        return pieces

    def __enter__(self):
        self._was_training = self.model.training
        self.model.eval()
        return self

    def __exit__(self, *exc):
        self._grads = None
        self.model.train(self._was_training)


def _generator(generator, seed):
    if generator is not None and seed is not None:
        raise PriorlabError("pass either generator= or seed=, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise PriorlabError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def _check_count(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PriorlabError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def hvp(model: nn.Module, loss_fn, batches: Batches, vector, *, params=None,
        low_memory: bool = False):
    """The Hessian-vector product ``H v`` of the mean loss over ``batches``.

    ``vector`` is either flat (one entry per selected parameter element, in ``params`` order) or a
    list of tensors shaped like the parameters; the result has the same form.
    """
    with _Curvature(model, loss_fn, batches, params, low_memory) as curvature:
        if isinstance(vector, torch.Tensor):
            if vector.dim() != 1 or vector.numel() != curvature.numel:
                raise PriorlabError(f"a flat vector must have shape ({curvature.numel},), one entry "
                                    f"per selected parameter element, got {tuple(vector.shape)}")
            flat, as_list = vector, False
        else:
            vector = list(vector)
            if len(vector) != len(curvature.params) or any(
                    not isinstance(v, torch.Tensor) or v.shape != p.shape
                    for v, p in zip(vector, curvature.params)):
                raise PriorlabError("vector must be a flat tensor or a list of tensors with the "
                                    "selected parameters' shapes, in the same order")
            flat, as_list = torch.cat([v.reshape(-1) for v in vector]), True
        if not torch.isfinite(flat).all():
            raise PriorlabError("vector holds NaN or inf; pass a finite direction")
        out = curvature.matvec(flat.to(device=curvature.device, dtype=curvature.dtype))
        return [t.clone() for t in curvature.unflatten(out)] if as_list else out


def hutchinson_trace(model: nn.Module, loss_fn, batches: Batches, *, num_samples: int = 100,
                     params=None, distribution: str = "rademacher",
                     generator: torch.Generator | None = None, seed: int | None = None,
                     low_memory: bool = False) -> TraceEstimate:
    """Hutchinson's unbiased estimate of Tr(H): the mean of ``zᵀ H z`` over random probes ``z``.

    Rademacher probes (entries ±1) give the smallest variance among i.i.d. probes; "gaussian" is
    the alternative. Probes come from ``generator`` (or a fresh one seeded with ``seed``, default
    0), so the estimate is deterministic. ``float(result)`` is the trace.
    """
    _check_count("num_samples", num_samples)
    if distribution not in ("rademacher", "gaussian"):
        raise did_you_mean(distribution, ("rademacher", "gaussian"), "probe distribution")
    gen = _generator(generator, seed)
    with _Curvature(model, loss_fn, batches, params, low_memory) as curvature:
        values = []
        for _ in range(num_samples):
            if distribution == "rademacher":
                z = torch.randint(0, 2, (curvature.numel,), generator=gen).to(curvature.dtype) * 2 - 1
            else:
                z = torch.randn(curvature.numel, generator=gen, dtype=curvature.dtype)
            z = z.to(curvature.device)
            values.append(float(z @ curvature.matvec(z)))
    mean = sum(values) / num_samples
    if num_samples > 1:
        var = sum((v - mean) ** 2 for v in values) / (num_samples - 1)
        std_error = math.sqrt(var / num_samples)
    else:
        std_error = float("inf")
    return TraceEstimate(trace=mean, std_error=std_error, num_samples=num_samples)


def _power_iteration(matvec, numel, dtype, device, iters, tol, gen, shift=0.0):
    v = torch.randn(numel, generator=gen, dtype=dtype).to(device)
    v /= v.norm()
    eigenvalue = 0.0
    for _ in range(iters):
        w = matvec(v) - shift * v
        new = float(v @ w)
        norm = w.norm()
        if norm == 0:
            return 0.0  # v lies in the null space of H - shift I
        v = w / norm
        if abs(new - eigenvalue) <= tol * max(abs(new), 1e-12):
            return new
        eigenvalue = new
    return eigenvalue


def top_eigenvalue(model: nn.Module, loss_fn, batches: Batches, *, iters: int = 100,
                   tol: float = 1e-6, params=None, generator: torch.Generator | None = None,
                   seed: int | None = None, low_memory: bool = False) -> float:
    """The largest eigenvalue of H (the sharpness), by power iteration on Hessian-vector products.

    Power iteration converges to the eigenvalue of largest magnitude; when that one is negative
    (a saddle or maximum), a second run on ``H - λ I`` finds the largest algebraic eigenvalue.
    Stops when the Rayleigh quotient changes by less than ``tol`` (relative) or after ``iters``
    products; the rate is |λ2/λ1| per step, so near-degenerate top eigenvalues converge slowly.
    """
    _check_count("iters", iters)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise PriorlabError(f"tol must be a finite number >= 0, got {tol!r}")
    gen = _generator(generator, seed)
    with _Curvature(model, loss_fn, batches, params, low_memory) as c:
        largest = _power_iteration(c.matvec, c.numel, c.dtype, c.device, iters, tol, gen)
        if largest >= 0:
            return largest
        return largest + _power_iteration(c.matvec, c.numel, c.dtype, c.device, iters, tol, gen,
                                          shift=largest)


def hessian_matrix(model: nn.Module, loss_fn, batches: Batches, *, params=None,
                   max_params: int = 5000) -> torch.Tensor:
    """The exact Hessian ``(P, P)`` over the selected parameters (flattened in ``params`` order).

    Costs P Hessian-vector products; meant for small models and for checking the estimators.
    """
    _check_count("max_params", max_params)
    with _Curvature(model, loss_fn, batches, params, low_memory=False) as c:
        if c.numel > max_params:
            raise PriorlabError(f"the exact Hessian has {c.numel}^2 entries (over max_params="
                                f"{max_params}); use hutchinson_trace / top_eigenvalue, or select "
                                "fewer params")
        eye = torch.eye(c.numel, dtype=c.dtype, device=c.device)
        rows = [c.matvec(eye[i]) for i in range(c.numel)]
    hessian = torch.stack(rows)
    return (hessian + hessian.T) / 2  # symmetric up to rounding; make it exactly so
