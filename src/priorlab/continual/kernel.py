"""Kernel ridge-regression task classifiers for kernel continual learning.

Kernel continual learning (Derakhshani et al., "Kernel Continual Learning", ICML 2021,
arXiv 2107.05757) keeps one shared feature extractor ``h`` and, for every task, a
non-parametric classifier fitted in closed form on that task's support set ``S = (X_s, Y_s)``
(a stored coreset there; generated samples in generative kernel continual learning,
arXiv 2112.13410):

    K = k(h(X_s), h(X_s)),   alpha = (K + lambda I)^-1 Y_s,   f(x) = gamma k(h(X_s), h(x))^T alpha + beta

with ``Y_s`` one-hot over the task's classes. As in the official KCL code, each task has its
own learnable ridge ``lambda`` (used as ``|lambda| + 0.01`` so that the solve stays well
posed), logit scale ``gamma`` (init 1) and shift ``beta`` (init 0); the classifier itself has
no weights that later tasks could overwrite, so forgetting comes only from ``h`` drifting and
from the support set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor

KERNELS = ("linear", "rbf")
RIDGE_FLOOR = 0.01  # the official code adds 0.01 to |lambda|


def kernel_matrix(a: torch.Tensor, b: torch.Tensor, kind: str = "linear", *,
                  length_scale: float = 1.0) -> torch.Tensor:
    """Gram matrix ``k(a_i, b_j)`` of features ``a`` (n, d) and ``b`` (m, d): ``"linear"``
    (dot product, the generative paper's headline kernel) or ``"rbf"``
    (``exp(-|a_i - b_j|^2 / (2 length_scale^2))``)."""
    who = "kernel_matrix"
    if kind not in KERNELS:
        raise did_you_mean(kind, KERNELS, "kernel")
    a = check_tensor(a, "a", who=who, ndim=2, dtype="float")
    b = check_tensor(b, "b", who=who, ndim=2, dtype="float")
    if a.shape[1] != b.shape[1]:
        raise PriorlabError(f"{who}: a and b must have the same feature width, got {a.shape[1]} "
                            f"and {b.shape[1]}")
    if kind == "linear":
        return a @ b.T
    length_scale = check_number(length_scale, "length_scale", who=who, low=0, low_open=True)
    return torch.exp(-torch.cdist(a, b).pow(2) / (2 * length_scale ** 2))


def _check_coefficient(value, name: str, who: str) -> None:
    """A finite real number, or a one-element float tensor (a learnable parameter)."""
    if isinstance(value, torch.Tensor):
        check_tensor(value, name, who=who, dtype="float", finite=True,
                     hint="a number or a one-element (learnable) tensor")
        if value.numel() != 1:
            raise PriorlabError(f"{who}: {name} must be a number or a one-element tensor, got "
                                f"shape {tuple(value.shape)}")
    else:
        check_number(value, name, who=who)


def kernel_ridge_logits(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                        n_classes: int, *, ridge: torch.Tensor | float = 0.1,
                        scale: torch.Tensor | float = 1.0, shift: torch.Tensor | float = 0.0,
                        kind: str = "linear", length_scale: float = 1.0) -> torch.Tensor:
    """Logits (n_query, n_classes) of the closed-form kernel ridge classifier (module
    docstring): ``scale * k(S, Q)^T (k(S, S) + (|ridge| + 0.01) I)^-1 onehot(y_s) + shift``.

    ``support_labels`` are local class indices in ``0..n_classes-1``. Differentiable in the
    features and in ``ridge``, ``scale`` and ``shift``.
    """
    who = "kernel_ridge_logits"
    n_classes = check_number(n_classes, "n_classes", who=who, low=1, integer=True)
    support = check_tensor(support, "support", who=who, ndim=2, dtype="float", finite=True)
    query = check_tensor(query, "query", who=who, shape=(None, support.shape[1]), dtype=support.dtype,
                         finite=True, hint="query features like the support's: same width and dtype")
    check_tensor(support_labels, "support_labels", who=who, shape=(len(support),),
                 dtype=torch.int64, hint="one local class index (int64) per support sample")
    if len(support) == 0:
        raise PriorlabError(f"{who}: the support set is empty")
    if int(support_labels.min()) < 0 or int(support_labels.max()) >= n_classes:
        raise PriorlabError(f"{who}: support_labels must lie in 0..{n_classes - 1}, got "
                            f"{int(support_labels.min())}..{int(support_labels.max())}")
    for name, value in (("ridge", ridge), ("scale", scale), ("shift", shift)):
        _check_coefficient(value, name, who)
    ridge = torch.as_tensor(ridge, dtype=support.dtype)
    gram = kernel_matrix(support, support, kind, length_scale=length_scale)
    eye = torch.eye(len(support), dtype=support.dtype, device=support.device)
    targets = F.one_hot(support_labels, n_classes).to(support.dtype)
    cross = kernel_matrix(support, query, kind, length_scale=length_scale)
    if not (bool(torch.isfinite(gram).all()) and bool(torch.isfinite(cross).all())):
        # the solve would turn the overflow into NaN logits
        raise PriorlabError(f"{who}: the kernel of support and query overflows {support.dtype}; "
                            "normalise the features (their dot products must stay finite)")
    alpha = torch.linalg.solve(gram + (ridge.abs() + RIDGE_FLOOR) * eye, targets)
    return scale * cross.T @ alpha + shift


class KernelRidgeHead(nn.Module):
    """One task's kernel classifier: its learnable ridge, scale and shift (official KCL
    initialisation: ``ridge`` from the argument, scale 1, shift 0); the support set is passed
    in at every call, so it can be a stored coreset or freshly generated samples."""

    def __init__(self, n_classes: int, *, ridge: float = 0.1, kind: str = "linear",
                 length_scale: float = 1.0):
        super().__init__()
        who = "KernelRidgeHead"
        self.n_classes = check_number(n_classes, "n_classes", who=who, low=1, integer=True)
        if kind not in KERNELS:
            raise did_you_mean(kind, KERNELS, "kernel")
        self.kind = kind
        self.length_scale = check_number(length_scale, "length_scale", who=who, low=0,
                                         low_open=True)
        ridge = check_number(ridge, "ridge", who=who, low=0,
                             hint="the official code starts the ridge around 0.1")
        self.ridge = nn.Parameter(torch.tensor(float(ridge)))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.shift = nn.Parameter(torch.tensor(0.0))

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor,
                query: torch.Tensor) -> torch.Tensor:
        return kernel_ridge_logits(support, support_labels, query, self.n_classes,
                                   ridge=self.ridge, scale=self.scale, shift=self.shift,
                                   kind=self.kind, length_scale=self.length_scale)


class KernelRidgeClassifier(nn.Module):
    """A feature extractor plus one :class:`KernelRidgeHead` over a fixed support set kept as
    buffers (a coreset): ``model(x)`` returns logits over the support's ``n_classes`` local
    classes, so it trains with plain cross-entropy (KCL's per-task training step)."""

    def __init__(self, features: nn.Module, support_x: torch.Tensor, support_labels: torch.Tensor,
                 n_classes: int, *, ridge: float = 0.1, kind: str = "linear",
                 length_scale: float = 1.0):
        super().__init__()
        who = "KernelRidgeClassifier"
        if not isinstance(features, nn.Module):
            raise PriorlabError(f"{who}: features must be an nn.Module, got "
                                f"{type(features).__name__}")
        support_x = check_tensor(support_x, "support_x", who=who, dtype="float")
        check_tensor(support_labels, "support_labels", who=who, shape=(len(support_x),),
                     dtype="integer")
        self.features = features
        self.head = KernelRidgeHead(n_classes, ridge=ridge, kind=kind, length_scale=length_scale)
        self.register_buffer("support_x", support_x.clone())
        self.register_buffer("support_labels", support_labels.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.support_x), self.support_labels, self.features(x))
