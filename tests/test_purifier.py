import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.nn.purifier import (
    PurifiedClassifier,
    QuantisedVAEPurifier,
    purifier_loss,
    uniform_quantise,
)
from priorlab.reproductions import p042_purifier


def test_quantiser_rounds_to_grid_and_gradient_is_identity():
    z = torch.tensor([0.26, -0.74, 1.1, 0.0], requires_grad=True)
    q = uniform_quantise(z, 0.5)
    assert torch.equal(q.detach(), torch.tensor([0.5, -0.5, 1.0, 0.0]))
    (q * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(z.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_encoder_lipschitz_constant_is_bounded():
    torch.manual_seed(0)
    purifier = QuantisedVAEPurifier(64, hidden=32, latent=8)
    purifier.train()
    for _ in range(20):  # power iterations converge while training
        purifier(torch.rand(4, 64))
    purifier.eval()
    assert purifier.encoder_lipschitz_bound() <= 1.05
    x, delta = torch.rand(50, 64), 0.1 * torch.randn(50, 64)
    with torch.no_grad():
        ratio = (purifier.encode(x + delta)[0] - purifier.encode(x)[0]).norm(dim=1) / delta.norm(dim=1)
    assert ratio.max() <= 1.05
    plain = QuantisedVAEPurifier(64, hidden=32, latent=8, lipschitz=False)
    with torch.no_grad():
        plain.to_mu.weight.mul_(10.0)
    assert plain.encoder_lipschitz_bound() > 1.05  # without spectral norm nothing bounds it


def test_purifier_loss_known_value_and_kl_zero_at_prior():
    x = torch.full((2, 4), 0.5)
    recon = torch.full((2, 4), 0.5)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    # BCE(0.5, 0.5) = log 2 per pixel, KL(N(0,1) || N(0,1)) = 0
    assert purifier_loss(x, recon, mu, logvar) == pytest.approx(4 * torch.log(torch.tensor(2.0)))
    kl_one = purifier_loss(x, recon, torch.ones(2, 3), logvar) - purifier_loss(x, recon, mu, logvar)
    assert kl_one == pytest.approx(1.5)  # 0.5 * sum(mu^2) over 3 latents


def test_plain_autoencoder_is_deterministic_and_variational_purifier_is_not():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8)
    plain = QuantisedVAEPurifier(64, 16, 4, quant_step=None, lipschitz=False, variational=False)
    assert torch.equal(plain.purify(x), plain.purify(x)) and plain.purify(x).shape == x.shape
    vae = QuantisedVAEPurifier(64, 16, 4, quant_step=0.01)
    assert not torch.equal(vae.purify(x), vae.purify(x))
    assert torch.equal(vae.purify(x, sample=False), vae.purify(x, sample=False))


def test_bpda_backward_is_identity_through_purifier():
    torch.manual_seed(0)
    purifier = QuantisedVAEPurifier(4, 8, 2)
    classifier = torch.nn.Linear(4, 3)
    x = torch.rand(5, 4, requires_grad=True)
    PurifiedClassifier(purifier, classifier, bpda=True)(x).sum().backward()
    assert torch.allclose(x.grad, classifier.weight.sum(0).expand(5, 4))


@pytest.mark.parametrize("call", [
    lambda: uniform_quantise(torch.zeros(2), 0.0),
    lambda: QuantisedVAEPurifier(0),
    lambda: QuantisedVAEPurifier(64, quant_step=-1.0),
    lambda: QuantisedVAEPurifier(64).purify(torch.rand(2, 1, 4, 4)),
    lambda: purifier_loss(torch.rand(2, 4), torch.rand(2, 5), torch.zeros(2, 1), None),
    lambda: purifier_loss(torch.rand(2, 4), torch.rand(2, 4), torch.zeros(2, 1), None, -1.0),
])
def test_bad_arguments_raise(call):
    with pytest.raises(PriorlabError):
        call()


def test_reproduction_smoke_all_arms():
    cfg = p042_purifier.CLAIM.tiers["smoke"]
    for arm in p042_purifier.CLAIM.arms:
        out = p042_purifier.run(arm, cfg, seed=0)
        names = {p042_purifier.CLAIM.metric, *p042_purifier.CLAIM.extra_metrics}
        assert names <= set(out.metrics)
        assert all(0.0 <= v <= 1.0 for v in out.metrics.values())
    with pytest.raises(PriorlabError):
        p042_purifier.run("quantized", cfg, seed=0)
