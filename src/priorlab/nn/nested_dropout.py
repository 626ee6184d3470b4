"""Nested dropout on a feature layer, as used to compress features against noisy labels.

Chen, Shen, Hu, Suykens, "Compressing Features for Learning with Noisy Labels", TNNLS 2022,
arXiv:2206.13140 (workshop version: "Boosting Co-teaching with Compression Regularization for
Label Noise", arXiv:2104.13766); nested dropout itself is from Rippel et al., ICML 2014.

During training each forward pass keeps only the first ``m`` channels of the feature and zeroes
the rest, with ``m`` drawn from::

    p(m) ∝ exp(-((m - mu) / sigma)^2),   m = 1, ..., num_features

so the first channels must carry the most information: the representation is ordered by
importance, and a small ``sigma`` compresses it hard. As in the official code
(yingyichen-cyy/Nested-Co-teaching, ``nested/train_resnet.py``): ``mu = 0``, one ``m`` per batch,
no rescaling of the kept channels, and at test time the number of kept channels is chosen on a
validation set (:func:`best_truncation`) rather than always using all of them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from priorlab.errors import PriorlabError


def _check_count(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PriorlabError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def nested_dropout_distribution(num_features: int, sigma: float, mu: float = 0.0) -> torch.Tensor:
    """``p(m) ∝ exp(-((m - mu) / sigma)^2)`` over ``m = 1..num_features`` (float64, sums to 1).

    Entry ``m - 1`` is the probability of keeping exactly the first ``m`` channels.
    """
    _check_count("num_features", num_features)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (
            math.isfinite(sigma) and sigma > 0):
        raise PriorlabError(f"nested dropout sigma must be a finite number > 0, got {sigma!r}; "
                            "the official code uses 10 for CIFAR-10 and 100 for CIFAR-100 / "
                            "Clothing1M")
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
        raise PriorlabError(f"nested dropout mu must be a finite number, got {mu!r}; the "
                            "official default is 0")
    m = torch.arange(1, num_features + 1, dtype=torch.float64)
    log_weights = -((m - mu) / sigma) ** 2
    # normalise in log space: exp underflows to all-zero when mu lies far outside 1..num_features
    return torch.softmax(log_weights, dim=0)


class NestedDropout(nn.Module):
    """Keep the first ``m`` of ``num_features`` channels along ``dim``; ``m ~ p(m)`` in training.

    ``sigma`` sets how hard the feature is compressed (smaller keeps fewer channels).
    ``per_sample=True`` draws one ``m`` per sample (Rippel et al.) instead of one per batch (the
    official Nested-Co-teaching code). In eval mode the module keeps ``eval_channels`` channels
    (all when None); set it to the value :func:`best_truncation` picks on validation data.
    ``seed`` gives the module its own random generator, saved in its ``state_dict`` so a resumed
    run draws the same truncations; without it the global torch generator is used, like
    ``nn.Dropout``.
    """

    def __init__(self, num_features: int, sigma: float = 10.0, mu: float = 0.0, *, dim: int = 1,
                 per_sample: bool = False, eval_channels: int | None = None,
                 seed: int | None = None):
        super().__init__()
        self.num_features = _check_count("num_features", num_features)
        self.sigma, self.mu = float(sigma), float(mu)
        self.register_buffer("keep_probs", nested_dropout_distribution(num_features, sigma, mu),
                             persistent=False)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise PriorlabError(f"dim must be an integer (the channel dimension), got {dim!r}")
        self.dim = dim
        self.per_sample = bool(per_sample)
        self.eval_channels = eval_channels
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise PriorlabError(f"seed must be an integer or None, got {seed!r}")
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    @property
    def eval_channels(self) -> int | None:
        return self._eval_channels

    @eval_channels.setter
    def eval_channels(self, value: int | None) -> None:
        if value is not None:
            _check_count("eval_channels", value)
            if value > self.num_features:
                raise PriorlabError(f"eval_channels={value} exceeds num_features="
                                    f"{self.num_features}; pass at most {self.num_features}")
        self._eval_channels = value

    def sample_channels(self, n: int = 1) -> torch.Tensor:
        """``n`` draws of the number of kept channels (int64, values in 1..num_features)."""
        probs = self.keep_probs.cpu()
        return torch.multinomial(probs, n, replacement=True, generator=self.generator) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
            raise PriorlabError(f"NestedDropout expects a float feature tensor, got {got}")
        dim = self.dim if self.dim >= 0 else x.ndim + self.dim
        if not 0 <= dim < x.ndim or x.shape[dim] != self.num_features:
            raise PriorlabError(f"NestedDropout was built for {self.num_features} channels on dim "
                                f"{self.dim} but got input of shape {tuple(x.shape)}; pass "
                                "num_features equal to the feature width, or fix dim")
        if not self.training:
            if self.eval_channels is None or self.eval_channels == self.num_features:
                return x
            keep = torch.full((1,), self.eval_channels, dtype=torch.long)
        else:
            if self.per_sample and dim == 0:
                raise PriorlabError("per_sample nested dropout needs the batch on dim 0 and the "
                                    "channels elsewhere; set dim to the channel dimension")
            keep = self.sample_channels(x.shape[0] if self.per_sample else 1)
        channel = torch.arange(self.num_features, device=x.device)
        mask = (channel.unsqueeze(0) < keep.to(x.device).unsqueeze(1)).to(x.dtype)  # (B or 1, C)
        shape = [mask.shape[0]] + [1] * (x.ndim - 1)
        shape[dim] = self.num_features
        return x * mask.reshape(shape)

    def get_extra_state(self):
        return {"generator": None if self.generator is None else self.generator.get_state(),
                "eval_channels": self.eval_channels}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict):
            raise PriorlabError("NestedDropout state must be the dict its state_dict saved")
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        self.eval_channels = state.get("eval_channels")

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, sigma={self.sigma:g}, mu={self.mu:g}, "
                f"per_sample={self.per_sample}, eval_channels={self.eval_channels}")


def logits_at_every_truncation(features: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    """Logits of a linear ``head`` on the first ``m`` feature channels, for every ``m``.

    ``features`` is ``(N, F)``; the result is ``(F, N, C)`` with entry ``m - 1`` equal to
    ``head(features * [1]*m + [0]*(F-m))``, computed with one cumulative sum.
    """
    if not isinstance(head, nn.Linear):
        raise PriorlabError(f"head must be an nn.Linear classifier, got {type(head).__name__}")
    if (not isinstance(features, torch.Tensor) or features.ndim != 2
            or features.shape[1] != head.in_features):
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise PriorlabError(f"features must have shape (N, {head.in_features}), got {got}")
    contributions = features.unsqueeze(2) * head.weight.t().unsqueeze(0)  # (N, F, C)
    logits = contributions.cumsum(dim=1).transpose(0, 1)
    return logits if head.bias is None else logits + head.bias


def best_truncation(truncation_logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, float]:
    """The number of channels ``m`` with the highest accuracy, and that accuracy.

    ``truncation_logits`` is ``(F, N, C)`` from :func:`logits_at_every_truncation` (or an
    average of several networks' ones). Ties go to the smallest ``m``, as in the official code.
    """
    if (not isinstance(truncation_logits, torch.Tensor) or truncation_logits.ndim != 3
            or not truncation_logits.is_floating_point() or 0 in truncation_logits.shape):
        got = (f"{truncation_logits.dtype} {tuple(truncation_logits.shape)}"
               if isinstance(truncation_logits, torch.Tensor) else type(truncation_logits).__name__)
        raise PriorlabError(f"truncation_logits must be non-empty float logits of shape (F, N, C), "
                            f"got {got}")
    if (not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex()
            or targets.dtype == torch.bool or tuple(targets.shape) != (truncation_logits.shape[1],)):
        raise PriorlabError(f"targets must be integer class indices of shape "
                            f"({truncation_logits.shape[1]},)")
    accuracy = (truncation_logits.argmax(dim=2) == targets.unsqueeze(0)).double().mean(dim=1)
    best = int(torch.argmax(accuracy))  # first maximum = fewest channels
    return best + 1, float(accuracy[best])
