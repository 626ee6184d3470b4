"""Linear probes: how linearly decodable a label is from frozen features.

A probe standardises the features with the training set's (weighted) mean and standard
deviation, then fits a linear classifier with an L2 penalty on its weights (not the bias):

- ``kind="logistic"``: multinomial logistic regression, minimising
  ``mean cross-entropy + l2/2 * ||W||²`` with full-batch L-BFGS in float64 from zero (a convex
  problem, so the result does not depend on a seed).
- ``kind="ridge"``: least squares onto one-hot targets, ``mean ||XW + b - Y||² + l2 * ||W||²``,
  in closed form; the class with the largest output wins.

Labels are integer classes ``(N,)`` or, when the truth is a distribution (e.g. the posterior of
a hidden state), soft labels ``(N, C)`` whose rows sum to 1; ``sample_weight`` ``(N,)`` weights
the rows (e.g. by their probability, to fit or score a probe on a whole population exactly).
With soft labels, accuracy is the expected accuracy ``sum_i w_i labels[i, predicted_i]``.

:func:`linear_probe` returns test accuracy; :func:`fit_linear_probe` returns the fitted
:class:`LinearProbe` for accuracy, predictions and (logistic only) cross-entropy in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError, did_you_mean

KINDS = ("logistic", "ridge")


def _check_features(name: str, feats, dim: int | None = None) -> torch.Tensor:
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or not feats.is_floating_point():
        got = (f"{feats.dtype} tensor of shape {tuple(feats.shape)}"
               if isinstance(feats, torch.Tensor) else type(feats).__name__)
        raise PriorlabError(f"{name} must be a 2-D floating-point (samples, features) tensor, "
                            f"got {got}; flatten features with x.flatten(1)")
    if feats.shape[0] == 0:
        raise PriorlabError(f"{name} has no samples")
    if dim is not None and feats.shape[1] != dim:
        raise PriorlabError(f"{name} has {feats.shape[1]} features but the probe was fitted on {dim}")
    if not torch.isfinite(feats).all():
        raise PriorlabError(f"{name} holds NaN or inf; probes need finite features")
    return feats.detach().to(torch.float64)


def _check_labels(name: str, labels, n: int, num_classes: int | None = None) -> torch.Tensor:
    """Integer labels -> long (N,); soft labels -> float64 (N, C) distributions."""
    if isinstance(labels, torch.Tensor) and labels.is_floating_point() and labels.dim() == 2:
        if labels.shape[0] != n or (num_classes is not None and labels.shape[1] != num_classes):
            want = f"({n}, {num_classes if num_classes is not None else 'classes'})"
            raise PriorlabError(f"soft {name} must have shape {want}, got {tuple(labels.shape)}")
        soft = labels.detach().to(torch.float64)
        if not torch.isfinite(soft).all() or (soft < 0).any() or \
                not torch.allclose(soft.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6):
            raise PriorlabError(f"soft {name} must be rows of probabilities summing to 1")
        return soft
    if (not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex()
            or labels.dtype == torch.bool or tuple(labels.shape) != (n,)):
        got = (f"{labels.dtype} tensor of shape {tuple(labels.shape)}"
               if isinstance(labels, torch.Tensor) else type(labels).__name__)
        raise PriorlabError(f"{name} must be integer class indices of shape ({n},) or soft labels "
                            f"of shape ({n}, classes), one per feature row, got {got}")
    if int(labels.min()) < 0:
        raise PriorlabError(f"{name} holds a negative class index ({int(labels.min())}); "
                            "classes are 0..C-1")
    if num_classes is not None and int(labels.max()) >= num_classes:
        raise PriorlabError(f"{name} holds class {int(labels.max())} but the probe has "
                            f"{num_classes} classes; pass num_classes= large enough")
    return labels.detach().long()


def _check_weights(sample_weight, n: int) -> torch.Tensor:
    if sample_weight is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if not isinstance(sample_weight, torch.Tensor) or tuple(sample_weight.shape) != (n,):
        got = (f"shape {tuple(sample_weight.shape)}" if isinstance(sample_weight, torch.Tensor)
               else type(sample_weight).__name__)
        raise PriorlabError(f"sample_weight must be a ({n},) tensor, one weight per row, got {got}")
    w = sample_weight.detach().to(torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
        raise PriorlabError("sample_weight must be finite, non-negative and not all zero")
    return w / w.sum()


def _targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return labels if labels.dim() == 2 else F.one_hot(labels, num_classes).double()


@dataclass
class LinearProbe:
    """A fitted probe: ``logits = ((x - mean) / scale) @ weight + bias``."""

    weight: torch.Tensor  # (features, classes)
    bias: torch.Tensor  # (classes,)
    mean: torch.Tensor
    scale: torch.Tensor
    kind: str

    @property
    def num_classes(self) -> int:
        return self.weight.shape[1]

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        x = _check_features("features", feats, self.weight.shape[0])
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logits(feats).argmax(1)

    def accuracy(self, feats: torch.Tensor, labels: torch.Tensor,
                 sample_weight: torch.Tensor | None = None) -> float:
        """(Weighted) accuracy; expected accuracy under soft labels."""
        predicted = self.predict(feats)
        n = predicted.shape[0]
        y = _check_labels("labels", labels, n, self.num_classes)
        hit = y[torch.arange(n), predicted] if y.dim() == 2 else (predicted == y).double()
        if sample_weight is None:
            return float(hit.mean())
        return float((_check_weights(sample_weight, n) * hit).sum())

    def nll(self, feats: torch.Tensor, labels: torch.Tensor,
            sample_weight: torch.Tensor | None = None) -> float:
        """(Weighted) mean cross-entropy of the probe's predictions, in nats (logistic only)."""
        if self.kind != "logistic":
            raise PriorlabError("a ridge probe gives scores, not probabilities; fit with "
                                "kind='logistic' to measure cross-entropy")
        log_q = F.log_softmax(self.logits(feats), 1)
        n = log_q.shape[0]
        y = _check_labels("labels", labels, n, self.num_classes)
        w = _check_weights(sample_weight, n)
        return float(-(w * (_targets(y, self.num_classes) * log_q).sum(1)).sum())


def fit_linear_probe(feats: torch.Tensor, labels: torch.Tensor, *, kind: str = "logistic",
                     l2: float = 1e-4, num_classes: int | None = None, max_iter: int = 500,
                     sample_weight: torch.Tensor | None = None) -> LinearProbe:
    """Fit a linear probe from ``feats`` (N, D) to ``labels`` (N,) or soft labels (N, C)."""
    if kind not in KINDS:
        raise did_you_mean(kind, KINDS, "probe kind")
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 < 0:
        raise PriorlabError(f"l2 must be a finite number >= 0, got {l2!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise PriorlabError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 2):
        raise PriorlabError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    x = _check_features("train features", feats)
    if x.shape[0] < 2:
        raise PriorlabError("a probe needs at least 2 training samples")
    y = _check_labels("train labels", labels, x.shape[0])
    if y.dim() == 2:
        if num_classes is not None and num_classes != y.shape[1]:
            raise PriorlabError(f"soft labels have {y.shape[1]} classes but num_classes={num_classes}")
        num_classes = y.shape[1]
    elif num_classes is None:
        num_classes = max(int(y.max()), 1) + 1
    else:
        y = _check_labels("train labels", labels, x.shape[0], num_classes)
    w = _check_weights(sample_weight, x.shape[0])

    mean = w @ x
    scale = (w @ (x - mean) ** 2).sqrt()
    scale = torch.where(scale > 1e-12 * (1 + mean.abs()), scale, torch.ones_like(scale))
    z = (x - mean) / scale
    targets = _targets(y, num_classes)
    d = z.shape[1]
    if kind == "ridge":
        t_mean = w @ targets
        gram = z.T @ (w[:, None] * z) + l2 * torch.eye(d, dtype=torch.float64)
        weight = torch.linalg.pinv(gram) @ (z.T @ (w[:, None] * (targets - t_mean)))
        bias = t_mean  # features are centred under w, so the bias is the weighted target mean
    else:
        weight = torch.zeros(d, num_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                      tolerance_grad=1e-10, tolerance_change=1e-12,
                                      history_size=20, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            log_q = F.log_softmax(z @ weight + bias, 1)
            loss = -(w * (targets * log_q).sum(1)).sum() + 0.5 * l2 * (weight ** 2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        weight, bias = weight.detach(), bias.detach()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise PriorlabError("the probe's fit did not stay finite; raise l2")
    return LinearProbe(weight=weight, bias=bias, mean=mean, scale=scale, kind=kind)


def linear_probe(train_feats: torch.Tensor, train_y: torch.Tensor, test_feats: torch.Tensor,
                 test_y: torch.Tensor, *, kind: str = "logistic", l2: float = 1e-4,
                 num_classes: int | None = None, max_iter: int = 500) -> float:
    """Test accuracy of a linear probe fitted on the training features (see module docstring)."""
    train = _check_features("train features", train_feats)
    test = _check_features("test features", test_feats)
    if test.shape[1] != train.shape[1]:
        raise PriorlabError(f"train features have {train.shape[1]} columns but test features have "
                            f"{test.shape[1]}; extract both from the same layer")
    train_labels = _check_labels("train labels", train_y, train.shape[0])
    test_labels = _check_labels("test labels", test_y, test.shape[0])
    if train_labels.dim() != test_labels.dim():
        raise PriorlabError("train and test labels must both be class indices or both soft labels")
    if num_classes is None and train_labels.dim() == 1:
        # a class seen only in the test set still needs an output
        num_classes = max(int(train_labels.max()), int(test_labels.max()), 1) + 1
    probe = fit_linear_probe(train, train_labels, kind=kind, l2=l2, num_classes=num_classes,
                             max_iter=max_iter)
    return probe.accuracy(test, test_labels)
