"""PromptSRC: self-regulating prompts for vision-language models.

Khattak, Wasim, Naseer, Khan, Yang & Khan, "Self-regulating Prompts: Foundational Model
Adaptation without Forgetting", ICCV 2023, arXiv:2307.06948; official code
muzairkhattak/PromptSRC (``trainers/promptsrc.py``). Prompts learned on a few labelled images
drift away from the frozen model's general features; PromptSRC ties them back with three
self-consistency terms (Sec. 3.2, Eqs. 3-5) added to the cross-entropy,

    L = CE(logits, y) + lambda_1 * L1(f~_p, f~) + lambda_2 * L1(g~_p, g~)
        + KL(softmax(zs_logits) || softmax(logits)),

where ``g~_p`` / ``f~_p`` are the unit text / image features with prompts, ``g~`` the frozen
model's unit text features averaged over many prompt templates (textual diversity, Sec. 3.3),
``f~`` the frozen image features and ``zs_logits = scale * f~ g~^T``. Official weights
(``TEXT_LOSS_WEIGHT`` 25, ``IMAGE_LOSS_WEIGHT`` 10); the L1 is the mean over all elements and the
KL is summed and divided by ``logits.numel()``, as the official trainer does.

Gaussian-weighted prompt aggregation (GPA, Sec. 3.2, Eq. 6): the prompts kept at the end are
``sum_t w_t P_t`` over the prompts ``P_t`` after epoch ``t = 1..E``, with ``w_t`` a Gaussian in
``t`` (official base-to-novel setting: mean 15, std 1 for E = 20) normalised to sum to one.

Nothing here is specific to a model: features and logits can come from ``transformers``'
``CLIPModel`` (``get_text_features`` / ``get_image_features``) or from the stand-in of
:mod:`priorlab.vl`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor

TEXT_WEIGHT = 25.0  # official TEXT_LOSS_WEIGHT
IMAGE_WEIGHT = 10.0  # official IMAGE_LOSS_WEIGHT


def self_consistency_terms(logits: torch.Tensor, text_features: torch.Tensor,
                           frozen_text_features: torch.Tensor, image_features: torch.Tensor,
                           frozen_image_features: torch.Tensor,
                           zero_shot_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """PromptSRC's unweighted self-consistency terms ``{"text", "image", "logits"}``.

    ``logits`` and ``zero_shot_logits`` (B, K); ``text_features`` and ``frozen_text_features``
    (K, D); ``image_features`` and ``frozen_image_features`` (B, D'). Features are compared after
    L2 normalisation (the official trainer normalises before the L1). The frozen inputs get no
    gradient.
    """
    who = "self_consistency_terms"
    check_tensor(logits, "logits", who=who, ndim=2, dtype="float", finite=True, non_empty=True)
    check_tensor(zero_shot_logits, "zero_shot_logits", who=who, shape=tuple(logits.shape), dtype="float",
                 finite=True)
    check_tensor(text_features, "text_features", who=who, shape=(logits.shape[1], None), dtype="float",
                 finite=True, hint="one text feature per class (the logits' second dimension)")
    check_tensor(frozen_text_features, "frozen_text_features", who=who, shape=tuple(text_features.shape),
                 dtype="float", finite=True)
    check_tensor(image_features, "image_features", who=who, shape=(logits.shape[0], None), dtype="float",
                 finite=True, hint="one image feature per image (the logits' first dimension)")
    check_tensor(frozen_image_features, "frozen_image_features", who=who,
                 shape=tuple(image_features.shape), dtype="float", finite=True)
    return {
        "text": F.l1_loss(F.normalize(text_features, dim=-1),
                          F.normalize(frozen_text_features.detach(), dim=-1)),
        "image": F.l1_loss(F.normalize(image_features, dim=-1),
                           F.normalize(frozen_image_features.detach(), dim=-1)),
        "logits": F.kl_div(logits.log_softmax(-1), zero_shot_logits.detach().log_softmax(-1),
                           reduction="sum", log_target=True) / logits.numel(),
    }


def promptsrc_loss(logits: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor,
                   frozen_text_features: torch.Tensor, image_features: torch.Tensor,
                   frozen_image_features: torch.Tensor, zero_shot_logits: torch.Tensor, *,
                   text_weight: float = TEXT_WEIGHT, image_weight: float = IMAGE_WEIGHT,
                   logits_weight: float = 1.0) -> torch.Tensor:
    """``CE(logits, labels) + text_weight * L1_text + image_weight * L1_image + logits_weight * KL``.

    With all three weights at 0 it is the plain prompt-tuning cross-entropy (CoOp / IVLP).
    See :func:`self_consistency_terms` for the shapes.
    """
    who = "promptsrc_loss"
    weights = {name: check_number(value, f"{name}_weight", who=who, low=0.0)
               for name, value in (("text", text_weight), ("image", image_weight), ("logits", logits_weight))}
    check_tensor(logits, "logits", who=who, ndim=2, dtype="float", finite=True, non_empty=True)
    check_tensor(labels, "labels", who=who, shape=(logits.shape[0],), dtype="integer")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise PriorlabError(f"{who}: labels must lie in [0, {logits.shape[1]}) (one per logit column)")
    terms = self_consistency_terms(logits, text_features, frozen_text_features, image_features,
                                   frozen_image_features, zero_shot_logits)
    loss = F.cross_entropy(logits, labels)
    for name, weight in weights.items():
        if weight:
            loss = loss + weight * terms[name]
    return loss


def gaussian_epoch_weights(epochs: int, mean: float = 15.0, std: float = 1.0) -> torch.Tensor:
    """GPA weights ``w_t ∝ exp(-(t - mean)^2 / (2 std^2))`` for epochs ``t = 1..epochs``, summing
    to one (the official trainer's normalised Gaussian density). Shape (epochs,), float64."""
    who = "gaussian_epoch_weights"
    epochs = check_number(epochs, "epochs", who=who, low=1, integer=True)
    mean = check_number(mean, "mean", who=who)
    std = check_number(std, "std", who=who, low=0.0, low_open=True)
    if not math.isfinite(mean) or not math.isfinite(std):
        raise PriorlabError(f"{who}: mean and std must be finite, got {mean}, {std}")
    t = torch.arange(1, epochs + 1, dtype=torch.float64)
    # softmax of the log-density: the official normalised density, without underflow to 0 / 0
    return torch.softmax(-0.5 * ((t - mean) / std) ** 2, 0)


class GaussianPromptAggregator:
    """GPA over the parameters ``params`` (the prompts): call :meth:`update` at the end of every
    epoch, then :meth:`load_into` writes ``sum_t w_t P_t`` into the parameters.

    ``state_dict`` / ``load_state_dict`` carry the running sum and the epoch count.
    """

    def __init__(self, params: Iterable[nn.Parameter], epochs: int, mean: float = 15.0, std: float = 1.0):
        self.params = list(params)
        if not self.params or not all(isinstance(p, torch.Tensor) for p in self.params):
            raise PriorlabError("GaussianPromptAggregator: params must be a non-empty iterable of tensors")
        self.weights = gaussian_epoch_weights(epochs, mean, std)
        self.epoch = 0
        self.sums = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Add this epoch's prompts with their weight; call once per epoch, after it ends."""
        if self.epoch >= len(self.weights):
            raise PriorlabError(f"GaussianPromptAggregator: update called for epoch {self.epoch + 1} "
                                f"of a {len(self.weights)}-epoch schedule")
        for total, param in zip(self.sums, self.params, strict=True):
            total += self.weights[self.epoch] * param.double()
        self.epoch += 1

    @torch.no_grad()
    def load_into(self) -> None:
        """Replace the parameters by the aggregate; all epochs must have been added."""
        if self.epoch != len(self.weights):
            raise PriorlabError(f"GaussianPromptAggregator: {self.epoch} of {len(self.weights)} epochs "
                                "aggregated; call update() after every epoch first")
        for total, param in zip(self.sums, self.params, strict=True):
            param.copy_(total.to(param.dtype))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "sums": [s.clone() for s in self.sums]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["sums"]) != len(self.sums):
            raise PriorlabError("GaussianPromptAggregator: state holds a different number of parameters")
        self.epoch = int(state["epoch"])
        self.sums = [s.clone() for s in state["sums"]]
