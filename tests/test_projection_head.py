import math

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.functional.contrastive import spectral_contrastive_loss, supcon_loss
from priorlab.methods.projection_head import EncoderWithHead, supcon_head
from priorlab.reproductions import p038_projection_head as repro


def test_supcon_known_value_by_hand():
    # unit features: a=(1,0), b=(1,0) share a label, c=(0,1) differs; T=1
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # anchors a, b: -log(e^1 / (e^1 + e^0)); anchor c has no positive -> adds 0; mean over 3
    per_anchor = -math.log(math.e / (math.e + 1))
    assert supcon_loss(z, y, temperature=1.0).item() == pytest.approx(2 * per_anchor / 3, rel=1e-6)
    # base_temperature scales by T / T_base
    assert supcon_loss(z, y, 1.0, base_temperature=2.0).item() == pytest.approx(per_anchor / 3,
                                                                                 rel=1e-6)


def test_supcon_matches_direct_formula_with_views():
    torch.manual_seed(0)
    feats, labels, temp = torch.randn(6, 2, 5), torch.tensor([0, 1, 0, 2, 1, 1]), 0.3
    z = F.normalize(torch.cat([feats[:, 0], feats[:, 1]]), dim=1)
    y = labels.repeat(2)
    total = 0.0
    for i in range(12):
        others = [a for a in range(12) if a != i]
        denom = sum(math.exp(float(z[i] @ z[a]) / temp) for a in others)
        pos = [p for p in others if y[p] == y[i]]
        total += -sum(float(z[i] @ z[p]) / temp - math.log(denom) for p in pos) / len(pos)
    assert supcon_loss(feats, labels, temp).item() == pytest.approx(total / 12, rel=1e-5)
    # scale-invariant: features are normalised inside
    assert supcon_loss(3 * feats, labels, temp).item() == pytest.approx(total / 12, rel=1e-5)


def test_spectral_known_value():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    # diag: 1, 2 -> -2 * 1.5 = -3; off-diagonal products: z1_0.z2_1 = 1, z1_1.z2_0 = 2 -> (1+4)/2
    assert spectral_contrastive_loss(z1, z2).item() == pytest.approx(-3 + 2.5)


def test_losses_give_finite_gradients_to_the_whole_model():
    torch.manual_seed(0)
    model = EncoderWithHead(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()),
                            supcon_head(8, 3))
    x = torch.randn(10, 4)
    (supcon_loss(model(x), torch.arange(10) % 3) + spectral_contrastive_loss(
        model(x), model(x + 0.1))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.embed(x).shape == (10, 8) and model(x).shape == (10, 3)


@pytest.mark.parametrize("bad", [
    lambda: supcon_loss(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), temperature=0),
    lambda: supcon_loss(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), base_temperature=-1.0),
    lambda: supcon_loss(torch.randn(4, 3), torch.tensor([0, 1])),
    lambda: supcon_loss(torch.randn(4), torch.tensor([0, 1, 0, 1])),
    lambda: supcon_loss(torch.randn(1, 3), torch.tensor([0])),
    lambda: spectral_contrastive_loss(torch.randn(1, 3), torch.randn(1, 3)),
    lambda: spectral_contrastive_loss(torch.randn(4, 3), torch.full((4, 3), float("inf"))),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_reproduction_smoke_all_arms():
    cfg = repro.CLAIM.tiers["smoke"]
    outs = {arm: repro.run(arm, cfg, seed=0) for arm in repro.CLAIM.arms}
    for out in outs.values():
        assert set(out.metrics) == {"fine_probe_acc", "coarse_probe_acc", "final_supcon_loss"}
        assert all(math.isfinite(v) for v in out.metrics.values())
        # accuracies are counts over the test images
        n_test = round(1 / out.resolution["fine_probe_acc"])
        assert out.metrics["fine_probe_acc"] * n_test == pytest.approx(
            round(out.metrics["fine_probe_acc"] * n_test))
    pre, post = outs["pre_projection"], outs["post_projection"]
    # the same trained network read at two layers: same training, different features
    assert pre.metrics["final_supcon_loss"] == post.metrics["final_supcon_loss"]
    assert pre.metrics["fine_probe_acc"] != post.metrics["fine_probe_acc"]
    assert pre.info["feature_dim"] == cfg["encoder"][-1] and post.info["feature_dim"] == cfg["feat_dim"]
    # without a head the network trains differently
    assert outs["no_head"].metrics["final_supcon_loss"] != pre.metrics["final_supcon_loss"]
    out = pre
    # the supcon loss fell during training
    y = out.curves["supcon_loss"]["y"]
    assert y[-1] < y[0]


# ------------------------------------------------------------------ issue 16: no silent NaN/inf

def test_supcon_empty_batch_error_names_features():
    with pytest.raises(PriorlabError, match=r"^supcon_loss: features must hold at least two"):
        supcon_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_supcon_direction_survives_extreme_feature_magnitudes():
    # F.normalize squares the entries: features of 1e30 came back as zero vectors (loss log 3
    # whatever the features), features of 1e-30 likewise
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(6, 2, 5, generator=g), torch.tensor([0, 1, 0, 1, 2, 2])
    reference = supcon_loss(features, labels)
    for scale in (1e30, 1e-30):
        assert torch.allclose(supcon_loss(features * scale, labels), reference, atol=1e-5)


def test_l2_normalize_is_bit_identical_to_f_normalize_on_ordinary_inputs():
    from priorlab.functional.contrastive import l2_normalize
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 7, generator=g) * torch.rand(200, 1, generator=g) * 100
    assert torch.equal(l2_normalize(x), F.normalize(x, dim=-1))
    assert torch.equal(l2_normalize(torch.zeros(2, 3).half()), torch.zeros(2, 3).half())


def test_spectral_loss_refuses_embeddings_that_overflow_it():
    # the loss grows like |z|^4: 1e30 in float32 gave inf; float64 holds the true value
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    with pytest.raises(PriorlabError, match=r"^spectral_contrastive_loss: z1 and z2 are too large"):
        spectral_contrastive_loss(z1 * 1e30, z2 * 1e30)
    exact = spectral_contrastive_loss(z1.double() * 1e30, z2.double() * 1e30)
    assert torch.isfinite(exact) and exact > 1e110


def test_spectral_loss_errors_name_z1_and_z2():
    with pytest.raises(PriorlabError, match=r"^spectral_contrastive_loss: z1 and z2 need at least 2"):
        spectral_contrastive_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(PriorlabError, match=r"^spectral_contrastive_loss: z1 and z2 must have one"):
        spectral_contrastive_loss(torch.randn(2, 3).half(), torch.randn(2, 3))
