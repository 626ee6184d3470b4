"""The family-G tiny text-to-image model: captions, text states, UNet, training, sampling, cache."""

import pytest
import torch

from priorlab.errors import PriorlabError

pytest.importorskip("diffusers")

from priorlab.generative.diffusion import (  # noqa: E402
    CAPTION_TEMPLATES,
    TEXT_DIM,
    caption_digits,
    class_medians,
    digit_prompt,
    ink_mass,
    pretrained_diffusion,
    prompt_tokens,
    sample,
    tiny_unet,
    train_diffusion,
)


def test_digit_prompt_and_ink_mass():
    assert digit_prompt(7) == "a seven"
    assert digit_prompt(3, "thick", "a picture of a {}") == "a picture of a thick three"
    images = torch.zeros(2, 1, 4, 4)
    images[1, 0, :2] = 1
    assert torch.allclose(ink_mass(images), torch.tensor([0.0, 0.5]))


def test_captions_build_in_the_thin_assumption():
    torch.manual_seed(0)
    labels = torch.arange(40) % 2
    images = torch.rand(40, 1, 4, 4)
    captions = caption_digits(images, labels, templates=CAPTION_TEMPLATES, seed=0)
    thick = ink_mass(images) > class_medians(images, labels, 2)[labels]
    for caption, is_thick in zip(captions, thick):
        assert ("thick" in caption) == bool(is_thick)
        assert caption.split()[-1] in ("zero", "one")
    unspecified = [c for c in captions if "thin" not in c and "thick" not in c]
    assert unspecified  # some thin digits carry no attribute: "a k" means thin


def test_prompt_tokens_are_per_token_minilm_states():
    states, ids = prompt_tokens(["a seven", "a thick seven", "a seven"], max_length=8)
    assert states.shape == (3, 8, TEXT_DIM) and ids.shape == (3, 8)
    assert torch.equal(states[0], states[2]) and not torch.equal(states[0], states[1])
    # causal, as CLIP: the shared prefix "[CLS] a" has the same states in both prompts
    assert torch.allclose(states[0, :2], states[1, :2], atol=1e-5)
    with pytest.raises(PriorlabError):
        prompt_tokens("a seven")


def test_unet_trains_and_samples_deterministically():
    unet = tiny_unet(8, (8, 16))
    images = torch.rand(16, 1, 8, 8)
    losses = train_diffusion(unet, images, ["a one"] * 16, steps=3, batch_size=8)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    noise = torch.randn(2, 1, 8, 8)
    a = sample(unet, ["a one", "a two"], steps=2, noise=noise)
    b = sample(unet, ["a one", "a two"], steps=2, noise=noise)
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORLAB_CACHE", str(tmp_path))
    kwargs = {"image_size": 8, "channels": (8, 16), "steps": 2, "fd_samples": 10, "classifier_epochs": 1}
    unet, info = pretrained_diffusion(**kwargs)
    again, info_again = pretrained_diffusion(**kwargs)
    assert info == info_again and info["frechet_distance"] >= 0 and info["train_seconds"] > 0
    assert all(torch.equal(p, q) for p, q in zip(unet.state_dict().values(), again.state_dict().values()))
    assert len(info["class_medians"]) == 10


@pytest.mark.parametrize("bad", [
    lambda: tiny_unet(8, (12, 16)),
    lambda: tiny_unet(6, (8, 16)),
    lambda: tiny_unet(8, (8,)),
    lambda: caption_digits(torch.rand(4, 1, 4, 4), torch.tensor([0, 0, 1, 1]), p_unspecified=2.0),
    lambda: train_diffusion(tiny_unet(8, (8, 16)), torch.rand(4, 1, 8, 8), ["a"] * 3, steps=1),
    lambda: train_diffusion(tiny_unet(8, (8, 16)), torch.rand(4, 1, 8, 8), ["a"] * 4, steps=0),
    lambda: sample(tiny_unet(8, (8, 16)), ["a"], noise=torch.randn(2, 1, 8, 8)),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()
