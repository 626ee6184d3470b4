"""DiSa: directional saliency-aware prompt learning for vision-language models.

Alipour Talemi, Kashiani, Nowdeh & Afghah, "DiSa: Directional Saliency-Aware Prompt Learning for
Generalizable Vision-Language Models", arXiv:2505.19373 (2025) (no official code found). DiSa
trains IVLP prompts (text and visual) with

    L = L_CE + L_SR + L_CIR + lambda * L_DiR,

- ``L_SR``: PromptSRC's self-regulation (L1 of prompted to frozen text and image features, KL
  to the zero-shot logits; :func:`priorlab.functional.prompt_regularisers.self_consistency_terms`).
- ``L_CIR`` (cross-interactive regularisation): the two *cross* pairings of the prompted and
  frozen towers must agree, ``KL(q(f_p^m, g_o) || q(f_o, g_p))`` with ``q(f, g) = softmax(s f g^T)``:
  prompted image features against frozen text features, and frozen image features against
  prompted text features. ``f_p^m`` are the prompted image features of the *saliency-masked*
  image: the frozen model scores every patch by how well it matches the frozen text feature of
  the image's class, and the least salient patches are blanked before the prompted encoder sees
  the image (:func:`patch_saliency`, :func:`saliency_keep_mask`, :func:`mask_patches`).
- ``L_DiR`` (directional regularisation): ``1 - cos(f_p, mu_y)``, with ``mu_y`` the class mean of
  the frozen image features of the training shots (:func:`class_prototypes`): the prompted
  feature keeps the prototype's *direction* rather than being pulled to a point.

Everything works on features, so it serves ``transformers``' ``CLIPModel`` (patch features from
:func:`clip_patch_features`) as well as the stand-in of :mod:`priorlab.vl`
(:func:`standin_patch_features`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.functional.prompt_regularisers import IMAGE_WEIGHT, TEXT_WEIGHT, promptsrc_loss
from priorlab.validation import check_number, check_same_dtype, check_tensor

DIRECTION_WEIGHT = 1.0  # lambda; the paper's value is not in the sources reachable here
MASK_RATIO = 0.25  # share of patches blanked; likewise chosen here (see the card)


def _check_labels(labels: torch.Tensor, n: int, k: int, who: str) -> None:
    check_tensor(labels, "labels", who=who, shape=(n,), dtype="integer")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise PriorlabError(f"{who}: labels must lie in [0, {k}) (one per class feature)")


def patch_saliency(patch_features: torch.Tensor, text_features: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Text-guided saliency (B, N): cosine of each patch feature (B, N, D), taken from the frozen
    image tower in the joint space, with the frozen text feature (K, D) of the image's class."""
    who = "patch_saliency"
    check_tensor(patch_features, "patch_features", who=who, ndim=3, dtype="float", finite=True,
                 non_empty=True)
    check_tensor(text_features, "text_features", who=who, shape=(None, patch_features.shape[2]),
                 dtype=patch_features.dtype, finite=True, non_empty=True)
    _check_labels(labels, patch_features.shape[0], text_features.shape[0], who)
    target = F.normalize(text_features[labels], dim=-1)
    return torch.einsum("bnd,bd->bn", F.normalize(patch_features, dim=-1), target)


def saliency_keep_mask(saliency: torch.Tensor, mask_ratio: float = MASK_RATIO) -> torch.Tensor:
    """Boolean (B, N): True for the ``N - floor(mask_ratio * N)`` most salient patches of each
    image (ties broken by the lower index), False for the patches to blank."""
    who = "saliency_keep_mask"
    check_tensor(saliency, "saliency", who=who, ndim=2, dtype="float", finite=True, non_empty=True)
    mask_ratio = check_number(mask_ratio, "mask_ratio", who=who, low=0.0, high=1.0, high_open=True)
    n = saliency.shape[1]
    n_masked = math.floor(mask_ratio * n)
    keep = torch.ones_like(saliency, dtype=torch.bool)
    if n_masked:
        # stable sort so equal scores mask the later patch first
        order = torch.sort(saliency, dim=1, descending=False, stable=True).indices
        lowest = order[:, :n_masked]
        keep.scatter_(1, lowest, False)
    return keep


def mask_patches(images: torch.Tensor, keep: torch.Tensor, patch_size: int,
                 fill: float = 0.0) -> torch.Tensor:
    """``images`` (B, C, H, W) with the patches where ``keep`` (B, N) is False set to ``fill``.
    Patches are ``patch_size`` squares in row-major order, as ViTs (and CLIP) cut them."""
    who = "mask_patches"
    check_tensor(images, "images", who=who, ndim=4, dtype="float", finite=True, non_empty=True)
    patch_size = check_number(patch_size, "patch_size", who=who, low=1, integer=True)
    fill = check_number(fill, "fill", who=who)
    b, _, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise PriorlabError(f"{who}: image size {h}x{w} is not a multiple of patch_size {patch_size}")
    rows, cols = h // patch_size, w // patch_size
    check_tensor(keep, "keep", who=who, shape=(b, rows * cols), dtype="bool",
                 hint=f"one flag per {patch_size}x{patch_size} patch")
    grid = keep.view(b, 1, rows, cols).to(images.dtype)
    pixel_keep = grid.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return images * pixel_keep + fill * (1 - pixel_keep)


def cross_interactive_loss(prompted_image: torch.Tensor, frozen_text: torch.Tensor,
                           frozen_image: torch.Tensor, prompted_text: torch.Tensor,
                           scale: float | torch.Tensor) -> torch.Tensor:
    """``KL(softmax(s f_p g_o^T) || softmax(s f_o g_p^T))`` summed and divided by the number of
    logits (PromptSRC's KL convention). Image features (B, D), text features (K, D); features are
    normalised here. Gradients reach both prompted sides; the frozen inputs are detached."""
    who = "cross_interactive_loss"
    check_tensor(prompted_image, "prompted_image", who=who, ndim=2, dtype="float", finite=True,
                 non_empty=True)
    d = prompted_image.shape[1]
    check_tensor(frozen_image, "frozen_image", who=who, shape=tuple(prompted_image.shape), dtype="float",
                 finite=True)
    check_tensor(frozen_text, "frozen_text", who=who, shape=(None, d), dtype="float", finite=True,
                 non_empty=True)
    check_tensor(prompted_text, "prompted_text", who=who, shape=tuple(frozen_text.shape), dtype="float",
                 finite=True)
    check_same_dtype(who, prompted_image=prompted_image, frozen_text=frozen_text,
                      frozen_image=frozen_image, prompted_text=prompted_text)
    scale = check_number(scale, "scale", who=who, low=0.0, low_open=True)
    p_logits = scale * F.normalize(prompted_image, dim=-1) @ F.normalize(frozen_text.detach(), dim=-1).T
    q_logits = scale * F.normalize(frozen_image.detach(), dim=-1) @ F.normalize(prompted_text, dim=-1).T
    return F.kl_div(q_logits.log_softmax(-1), p_logits.log_softmax(-1), reduction="sum",
                    log_target=True) / p_logits.numel()


def class_prototypes(frozen_image: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Unit class means (K, D) of the frozen image features (N, D); every class must occur."""
    who = "class_prototypes"
    check_tensor(frozen_image, "frozen_image", who=who, ndim=2, dtype="float", finite=True, non_empty=True)
    num_classes = check_number(num_classes, "num_classes", who=who, low=1, integer=True)
    _check_labels(labels, frozen_image.shape[0], num_classes, who)
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise PriorlabError(f"{who}: classes {missing} have no image; a prototype needs at least one")
    sums = torch.zeros(num_classes, frozen_image.shape[1], dtype=frozen_image.dtype)
    sums.index_add_(0, labels, frozen_image.detach())
    return F.normalize(sums / counts.unsqueeze(1), dim=-1)


def directional_loss(image_features: torch.Tensor, labels: torch.Tensor,
                     prototypes: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 - cos(f_p, mu_y)`` (paper's L_DiR); ``prototypes`` (K, D) from
    :func:`class_prototypes`, detached."""
    who = "directional_loss"
    check_tensor(image_features, "image_features", who=who, ndim=2, dtype="float", finite=True,
                 non_empty=True)
    check_tensor(prototypes, "prototypes", who=who, shape=(None, image_features.shape[1]), dtype="float",
                 finite=True, non_empty=True)
    _check_labels(labels, image_features.shape[0], prototypes.shape[0], who)
    check_same_dtype(who, image_features=image_features, prototypes=prototypes)
    return (1 - F.cosine_similarity(image_features, prototypes.detach()[labels], dim=-1)).mean()


def disa_loss(logits: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor,
              frozen_text_features: torch.Tensor, image_features: torch.Tensor,
              frozen_image_features: torch.Tensor, zero_shot_logits: torch.Tensor,
              masked_image_features: torch.Tensor, prototypes: torch.Tensor,
              scale: float | torch.Tensor, *, text_weight: float = TEXT_WEIGHT,
              image_weight: float = IMAGE_WEIGHT, logits_weight: float = 1.0,
              cross_weight: float = 1.0, direction_weight: float = DIRECTION_WEIGHT) -> torch.Tensor:
    """DiSa's objective: :func:`promptsrc_loss` (CE + L_SR) ``+ cross_weight * L_CIR +
    direction_weight * L_DiR``.

    ``masked_image_features`` (B, D) are the prompted image features of the saliency-masked
    images (pass ``image_features`` for CIR without masking); the CIR pairs them with the frozen
    text features. With every weight at 0 it is plain prompt tuning (IVLP's cross-entropy).
    """
    who = "disa_loss"
    cross_weight = check_number(cross_weight, "cross_weight", who=who, low=0.0)
    direction_weight = check_number(direction_weight, "direction_weight", who=who, low=0.0)
    loss = promptsrc_loss(logits, labels, text_features, frozen_text_features, image_features,
                          frozen_image_features, zero_shot_logits, text_weight=text_weight,
                          image_weight=image_weight, logits_weight=logits_weight)
    if cross_weight:
        # checked here too, so that an error names disa_loss's arguments
        check_tensor(masked_image_features, "masked_image_features", who=who,
                     shape=tuple(image_features.shape), dtype="float", finite=True)
        check_same_dtype(who, masked_image_features=masked_image_features,
                          frozen_text_features=frozen_text_features,
                          frozen_image_features=frozen_image_features, text_features=text_features)
        loss = loss + cross_weight * cross_interactive_loss(masked_image_features, frozen_text_features,
                                                            frozen_image_features, text_features, scale)
    if direction_weight:
        loss = loss + direction_weight * directional_loss(image_features, labels, prototypes)
    return loss


@torch.no_grad()
def standin_patch_features(encoder, images: torch.Tensor) -> torch.Tensor:
    """Patch features (B, N, embed_dim) of a frozen :class:`priorlab.vl.standin.PromptableViT`
    in the joint space: the last layer's patch tokens through its final norm and projection (the
    path its class token takes)."""
    who = "standin_patch_features"
    check_tensor(images, "images", who=who, dtype="float",
                 shape=(None, encoder.channels, encoder.image_size, encoder.image_size))
    b, c, p = images.shape[0], encoder.channels, encoder.patch_size
    g = encoder.image_size // p
    patches = images.view(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
    tokens = torch.cat([encoder.cls_token.expand(b, -1, -1), encoder.patch_embed(patches)], 1)
    tokens = tokens + encoder.pos_embed
    for block in encoder.blocks:
        tokens, _ = block(tokens)
    return encoder.project(encoder.norm(tokens)[:, 1:])


@torch.no_grad()
def clip_patch_features(clip, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch features (B, N, projection_dim) of a frozen ``transformers`` ``CLIPModel``: the
    vision tower's last patch tokens through ``post_layernorm`` and ``visual_projection`` (the
    path ``get_image_features`` takes for the class token)."""
    check_tensor(pixel_values, "pixel_values", who="clip_patch_features", ndim=4, dtype="float",
                 non_empty=True)
    vision = clip.vision_model
    hidden = vision(pixel_values=pixel_values).last_hidden_state[:, 1:]
    return clip.visual_projection(vision.post_layernorm(hidden))
