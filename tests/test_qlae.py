"""QLAE: QuantizedLatent, the shared autoencoders and the p029 reproduction's arms."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.nn.latent_autoencoder import Autoencoder, BetaVAE, ShapesDecoder, ShapesEncoder
from priorlab.nn.latent_quantization import QuantizedLatent
from priorlab.reproductions import p029_qlae


def test_quantize_snaps_to_nearest_value_per_latent():
    q = QuantizedLatent(2, 3)  # values -0.5, 0, 0.5 for both latents
    with torch.no_grad():
        q.values[1] = torch.tensor([-2.0, 1.0, 4.0])
    z = torch.tensor([[0.2, 2.4], [-0.4, -9.0], [0.3, 3.0]])
    quantized, index = q.quantize(z)
    assert torch.equal(quantized, torch.tensor([[0.0, 1.0], [-0.5, -2.0], [0.5, 4.0]]))
    assert torch.equal(index, torch.tensor([[1, 1], [0, 0], [2, 2]]))


def test_straight_through_and_losses():
    q = QuantizedLatent(3, 10, quantization_weight=0.01, commitment_weight=0.02)
    z = torch.randn(8, 3, requires_grad=True)
    z_hat, losses = q(z)
    quantized, _ = q.quantize(z.detach())
    assert torch.allclose(z_hat, quantized)
    gap = (z.detach() - quantized).pow(2).mean()
    assert torch.allclose(losses["quantization"], 0.01 * gap)
    assert torch.allclose(losses["commitment"], 0.02 * gap)
    # the decoder's gradient reaches the encoder unchanged (straight-through)
    z_hat.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    # the quantisation loss moves only the codebook, the commitment loss only the encoder
    z.grad = None
    losses["quantization"].backward(retain_graph=True)
    assert z.grad is None and q.values.grad.abs().sum() > 0
    q.values.grad = None
    losses["commitment"].backward()
    assert q.values.grad is None and z.grad.abs().sum() > 0


def test_fixed_codebook_and_zero_weights():
    q = QuantizedLatent(4, 5, learnable=False, quantization_weight=0.0, commitment_weight=0.0)
    assert not q.values.requires_grad
    assert torch.allclose(q.values[0], torch.linspace(-0.5, 0.5, 5))
    _, losses = q(torch.randn(6, 4))
    assert all(v.item() == 0 for v in losses.values())
    assert "num_values=5" in repr(q)


def test_bad_arguments():
    for bad in (lambda: QuantizedLatent(0), lambda: QuantizedLatent(2, 1),
                lambda: QuantizedLatent(2, quantization_weight=-1.0),
                lambda: QuantizedLatent(2)(torch.zeros(3, 5)),
                lambda: ShapesEncoder(4, size=24), lambda: ShapesDecoder(0),
                lambda: BetaVAE(4, beta=-1.0), lambda: Autoencoder(3)(torch.zeros(2, 1, 16, 16))):
        with pytest.raises(PriorlabError):
            bad()


@pytest.mark.parametrize("size", [16, 32])
def test_autoencoders_shapes_and_gradients(size):
    torch.manual_seed(0)
    x = torch.rand(4, 1, size, size)
    models = (Autoencoder(6, size, width=8),
              Autoencoder(6, size, bottleneck=QuantizedLatent(6), width=8),
              BetaVAE(6, size, beta=4.0, width=8))
    for model in models:
        assert model.encode(x).shape == (4, 6)
        out = model(x)
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
        loss, terms = model.loss(x)
        loss.backward()
        assert torch.isfinite(loss) and "bce" in terms
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert set(models[1].loss(x)[1]) == {"bce", "quantization", "commitment"}
    assert set(models[2].loss(x)[1]) == {"bce", "kl"}


def test_qlae_latents_are_on_the_grid_and_vae_is_deterministic_in_eval():
    torch.manual_seed(0)
    x = torch.rand(5, 1, 16, 16)
    qlae = Autoencoder(4, 16, bottleneck=QuantizedLatent(4, 10), width=8)
    z = qlae.encode(x)
    assert all(set(z[:, j].tolist()) <= set(qlae.bottleneck.values[j].tolist()) for j in range(4))
    vae = BetaVAE(4, 16, width=8).eval()
    assert torch.equal(vae.loss(x)[0], vae.loss(x)[0])


def test_beta_scales_only_the_kl_term():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 16, 16)
    vae = BetaVAE(4, 16, beta=0.0, width=8).eval()
    loss0, terms = vae.loss(x)
    vae.beta = 8.0
    loss8, _ = vae.loss(x)
    assert torch.allclose(loss8 - loss0, torch.tensor(8.0 * terms["kl"] / 256), atol=1e-6)


def test_arms_differ_and_optimizer_decays_weights_only():
    cfg = {**p029_qlae.CLAIM.tiers["smoke"], "steps": 2, "n_train": 64, "n_test": 64}
    qlae = p029_qlae.build_model("qlae", cfg)
    assert isinstance(qlae.bottleneck, QuantizedLatent)
    assert p029_qlae.build_model("ae", cfg).bottleneck is None
    assert isinstance(p029_qlae.build_model("beta_vae", cfg), BetaVAE)
    groups = p029_qlae.optimizer_for("qlae", qlae, cfg).param_groups
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert any(p is qlae.bottleneck.values for p in groups[1]["params"])
    assert p029_qlae.optimizer_for("beta_vae", p029_qlae.build_model("beta_vae", cfg),
                                   cfg).param_groups[0]["weight_decay"] == 0.0
    with pytest.raises(PriorlabError, match="did you mean"):
        p029_qlae.run("qlea", cfg, 0)


def test_empty_batch_and_overflow_raise_instead_of_nan_losses():
    layer = QuantizedLatent(2)
    with pytest.raises(PriorlabError, match=r"\bz\b"):
        layer(torch.zeros(0, 2))
    with pytest.raises(PriorlabError, match="overflows"):
        layer(torch.tensor([[1e30, 0.0]]))
