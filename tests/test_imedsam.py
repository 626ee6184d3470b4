"""I-MedSAM (seed 39): adapters on a frozen SAM encoder, the two-stage implicit decoder, the loss,
the transformers SAM interface (tiny config, no download) and the reproduction's plumbing."""

import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.fields import grid_coords
from priorlab.nn.imedsam import (
    FrequencyEncoding,
    GatedLoRAQKV,
    IMedSAM,
    IMedSAMEncoder,
    ImplicitSegDecoder,
    PixelSegDecoder,
    TinySamEncoder,
    dice_ce_loss,
    frequency_image,
    imedsam_loss,
    imedsam_param_groups,
)
from priorlab.registry import get
from priorlab.reproductions import p039_imedsam


def _base(dim=16, depth=2):
    torch.manual_seed(0)
    return TinySamEncoder(image_size=16, patch_size=4, in_channels=1, dim=dim, depth=depth, heads=2,
                          out_channels=16)


def _decoder(**kw):
    return ImplicitSegDecoder(16, features=8, pe_features=4, num_frequencies=3, max_freq_exp=2.0, seed=0,
                              **kw)


def test_frequency_image_is_the_normalised_centred_spectrum():
    image = torch.zeros(1, 2, 4, 4)
    image[:, :, 0, 0] = 1.0  # a delta: flat spectrum -> constant, normalised by a zero range
    assert torch.equal(frequency_image(image), torch.zeros_like(image))
    const = torch.ones(1, 1, 4, 4)  # all energy in the DC term, which fftshift moves to (2, 2)
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 2, 2] = 1.0
    torch.testing.assert_close(frequency_image(const), expected)


def test_lora_starts_as_the_frozen_projection_and_touches_only_its_slices():
    torch.manual_seed(0)
    qkv = nn.Linear(6, 18)
    lora = GatedLoRAQKV(qkv, rank=2, targets="qv")
    x = torch.randn(3, 2, 2, 6)
    torch.testing.assert_close(lora(x), qkv(x))
    with torch.no_grad():
        for layer in lora.lora_b.values():
            layer.weight.normal_()
    delta = lora(x) - qkv(x)
    assert delta[..., 6:12].abs().max() == 0  # k untouched
    assert delta[..., :6].abs().max() > 0 and delta[..., 12:].abs().max() > 0
    # the gate is linear in the block input's spatial mean: zero gate, zero update
    with torch.no_grad():
        lora.gate.weight.zero_()
    torch.testing.assert_close(lora(x), qkv(x))


def test_encoder_freezes_the_base_and_equals_it_at_zero_strength():
    base = _base()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        reference = base(x)
    encoder = IMedSAMEncoder(base, freq_scale=0.0)
    torch.testing.assert_close(encoder(x), reference)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".gate." in n or "freq_adapters" in n for n in trainable)
    encoder.freq_scale = 0.5  # the frequency stream changes the features
    assert not torch.allclose(encoder(x), reference)
    with pytest.raises(PriorlabError, match="already"):
        IMedSAMEncoder(base)


def test_only_adapters_and_decoder_change_in_training():
    model = IMedSAM(IMedSAMEncoder(_base()), _decoder())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(imedsam_param_groups(model, lr=1e-2), weight_decay=0.01)
    x = torch.rand(4, 1, 16, 16)
    y = (x > 0.5).float()
    for _ in range(3):
        loss = imedsam_loss(model(x), y, fine_weight=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        changed = not torch.equal(p, before[name])
        assert changed == p.requires_grad or "lora_a" in name, name  # A gets no gradient while B = 0
    groups = imedsam_param_groups(model, lr=1e-3)
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(5e-5)
    assert all(".coarse." in n or ".fine." in n for n, p in model.named_parameters()
               if any(p is q for q in groups[0]["params"]))


def test_decoder_refines_the_most_uncertain_points():
    torch.manual_seed(0)
    decoder = _decoder(top_k_ratio=0.25)
    features = torch.randn(2, 16, 4, 4)
    coords = grid_coords(8, 8).expand(2, -1, -1)
    out = decoder(features, coords)
    assert out.coarse.shape == out.fine.shape == out.uncertainty.shape == (2, 64)
    assert out.refined.sum(1).tolist() == [16, 16]
    for b in range(2):  # refined = the top 16 variances of each image
        threshold = out.uncertainty[b][out.refined[b]].min()
        assert (out.uncertainty[b][~out.refined[b]] <= threshold).all()
    torch.testing.assert_close(out.fine[~out.refined], out.coarse[~out.refined])
    assert not torch.equal(out.fine[out.refined], out.coarse[out.refined])
    decoder.eval()  # eval: the coarse logits are dropout-free and repeatable
    a, b = decoder(features, coords), decoder(features, coords)
    torch.testing.assert_close(a.coarse, b.coarse)
    assert _decoder(top_k_ratio=0.0)(features, coords).refined.sum() == 0


def test_decoder_renders_at_any_resolution_and_round_trips():
    model = IMedSAM(IMedSAMEncoder(_base()), _decoder())
    x = torch.rand(2, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        for size in [(8, 8), (16, 16), (40, 24)]:
            out = model(x, size=size)
            assert out.fine.shape == (2, 1, *size) and torch.isfinite(out.fine).all()
        copy = IMedSAM(IMedSAMEncoder(_base()), _decoder())
        copy.load_state_dict(model.state_dict())
        copy.eval()
        torch.testing.assert_close(copy(x).coarse, model(x).coarse)


def test_frequency_encoding_values_and_progressive_mask():
    enc = FrequencyEncoding(num_frequencies=2, max_freq_exp=1.0)
    coords = torch.tensor([[0.25, -0.5]])
    out = enc(coords)
    assert out.shape == (1, 10)
    # [x, sin/cos of band 2^0, sin/cos of band 2^1]; band 1 of the row: sin(2 pi 0.25) = 1
    torch.testing.assert_close(out[0, :2], coords[0])
    torch.testing.assert_close(out[0, 2], torch.tensor(1.0))
    masked = enc(coords, progress=0.2)  # keeps int(0.2 * 10) + 3 = 5 channels
    assert torch.equal(masked[0, :5], out[0, :5]) and masked[0, 5:].abs().sum() == 0


def test_dice_ce_loss_known_values():
    logits = torch.tensor([[[[20.0, -20.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert float(dice_ce_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)
    zero = torch.zeros(1, 1, 1, 2)
    # p = 0.5: Dice = 1 - (2 * 0.5) / (0.5 + 1) = 1/3; CE = log 2
    expected = 0.8 / 3 + 0.2 * math.log(2)
    assert float(dice_ce_loss(zero, target)) == pytest.approx(expected, rel=1e-4)


def test_pixel_decoder_resizes_its_logits():
    decoder = PixelSegDecoder(16)
    features = torch.randn(2, 16, 4, 4)
    assert decoder(features).shape == (2, 1, 16, 16)
    assert decoder(features, (32, 32)).shape == (2, 1, 32, 32)


def test_wraps_transformers_sam_on_a_tiny_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.SamVisionConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          image_size=32, patch_size=8, output_channels=16, mlp_dim=32,
                                          window_size=2, global_attn_indexes=[1])
    model = transformers.SamModel(transformers.SamConfig(vision_config=config.to_dict()))
    torch.manual_seed(0)
    with torch.no_grad():  # a random (not pre-trained) encoder; some versions leave zeros
        for p in model.vision_encoder.parameters():
            p.normal_(0, 0.2)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = model.vision_encoder(x).last_hidden_state
    encoder = IMedSAMEncoder(model, freq_scale=0.0)
    assert encoder.encoder is model.vision_encoder
    torch.testing.assert_close(encoder(x), reference)
    segmenter = IMedSAM(IMedSAMEncoder(transformers.SamModel(transformers.SamConfig(
        vision_config=config.to_dict()))), _decoder())
    out = segmenter(x, size=(16, 16))
    imedsam_loss(out, torch.ones(2, 1, 16, 16)).backward()
    assert out.fine.shape == (2, 1, 16, 16)


@pytest.mark.parametrize("bad", [
    lambda: IMedSAMEncoder(nn.Linear(3, 3)),
    lambda: IMedSAMEncoder(_base(), rank=0),
    lambda: IMedSAMEncoder(_base(), lora_targets="qq"),
    lambda: IMedSAMEncoder(_base(), freq_scale=float("nan")),
    lambda: GatedLoRAQKV(nn.Linear(4, 8)),
    lambda: ImplicitSegDecoder(12),
    lambda: ImplicitSegDecoder(16, top_k_ratio=-0.1),
    lambda: ImplicitSegDecoder(16, seed=1.5),
    lambda: _decoder()(torch.randn(1, 8, 4, 4), torch.zeros(1, 3, 2)),
    lambda: _decoder()(torch.randn(1, 16, 4, 4), torch.zeros(1, 3, 3)),
    lambda: IMedSAMEncoder(_base())(torch.full((1, 1, 16, 16), float("nan"))),
    lambda: FrequencyEncoding()(torch.zeros(1, 2), progress=1.5),
    lambda: dice_ce_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3)),
    lambda: imedsam_param_groups(nn.Linear(2, 2).requires_grad_(False)),
])
def test_bad_arguments(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_card_and_reproduction():
    card = get("i-medsam")
    assert card.seed_id == 39 and card.component is IMedSAM
    claim = p039_imedsam.CLAIM
    assert claim.method == card.id and card.reproduction == "p039_imedsam"
    cfg = dict(claim.tiers["smoke"])
    outs = {arm: p039_imedsam.run(arm, dict(cfg), 0) for arm in claim.arms}
    for arm, out in outs.items():
        assert set(out.metrics) == {claim.metric, *claim.extra_metrics}, arm
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in out.metrics.values()), arm
        assert len(out.info["pred_x2_image"]) == max(cfg["eval_sizes"])
    assert outs["imedsam"].metrics != outs["pixel"].metrics
    assert outs["imedsam"].info["bf_coarse"] and not outs["pixel"].info["bf_coarse"]
    with pytest.raises(PriorlabError):
        p039_imedsam.run("pixl", dict(cfg), 0)
