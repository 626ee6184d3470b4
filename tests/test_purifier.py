import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.nn.purifier import (
    PurifiedClassifier,
    QuantisedVAEPurifier,
    purifier_loss,
    uniform_quantise,
)
from priorlab.reproductions import p042_purifier
from priorlab.robust.attacks import pgd, strongest_per_example


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


def test_identity_backward_skips_the_purifier():
    torch.manual_seed(0)
    purifier = QuantisedVAEPurifier(4, 8, 2)
    classifier = torch.nn.Linear(4, 3)
    x = torch.rand(5, 4, requires_grad=True)
    PurifiedClassifier(purifier, classifier, backward="identity")(x).sum().backward()
    assert torch.allclose(x.grad, classifier.weight.sum(0).expand(5, 4))


def test_full_backward_is_chain_rule_with_straight_through_quantiser():
    torch.manual_seed(0)
    purifier = QuantisedVAEPurifier(6, 8, 3, quant_step=0.25).eval()
    classifier = torch.nn.Linear(6, 3)
    x = torch.rand(4, 6, requires_grad=True)
    PurifiedClassifier(purifier, classifier, sample=False)(x).sum().backward()
    grad = x.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # by hand: d out / d z at the quantised code, pulled back through the encoder's mean
    mu = purifier.encode(x)[0]
    z_q = uniform_quantise(mu, 0.25).detach().requires_grad_(True)
    classifier(torch.sigmoid(purifier.decoder(z_q))).sum().backward()
    (expected,) = torch.autograd.grad((mu * z_q.grad).sum(), x)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert not torch.allclose(grad, classifier.weight.sum(0).expand(4, 6), atol=1e-3)


def test_gradient_through_sampled_quantised_purifier_is_finite_and_nonzero():
    torch.manual_seed(0)
    purifier = QuantisedVAEPurifier(64, 16, 4, quant_step=0.5).eval()
    model = PurifiedClassifier(purifier, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    x = torch.rand(8, 1, 8, 8, requires_grad=True)
    torch.nn.functional.cross_entropy(model(x), torch.arange(8)).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()  # every example gets a gradient


def _tiny_trained_setup():
    """Three noisy binary prototypes in 16 dimensions; a small quantised purifier and a linear
    classifier trained on them (clean purified accuracy ~96%)."""
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.rand(3, 16, generator=gen).round()
    y = torch.arange(96) % 3
    x = (prototypes[y] * 0.8 + 0.1 + 0.1 * torch.randn(96, 16, generator=gen)).clamp(0, 1)
    torch.manual_seed(0)
    purifier = QuantisedVAEPurifier(16, hidden=32, latent=4, quant_step=0.5)
    classifier = torch.nn.Linear(16, 3)
    opt = torch.optim.Adam([*classifier.parameters(), *purifier.parameters()], lr=1e-2)
    for _ in range(200):
        loss = F.cross_entropy(classifier(x), y) + purifier_loss(x, *purifier(x), kl_weight=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in [*classifier.parameters(), *purifier.parameters()]:
        p.requires_grad_(False)
    return purifier.eval(), classifier, x[:48], y[:48]


def test_full_gradient_attack_is_at_least_as_strong_as_identity_bpda():
    purifier, classifier, x, y = _tiny_trained_setup()
    defended = PurifiedClassifier(purifier, classifier)
    attacks = {}
    for backward in ("full", "identity"):
        model = PurifiedClassifier(purifier, classifier, backward=backward)
        attacks[backward] = pgd(model, x, y, 0.3, 0.03, 10, eot=4,
                                generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    with torch.no_grad():  # expected loss and accuracy over 32 purification draws
        draws = {b: [defended(a) for _ in range(32)] for b, a in attacks.items()}
    loss = {b: sum(F.cross_entropy(o, y) for o in d) / 32 for b, d in draws.items()}
    acc = {b: sum((o.argmax(1) == y).float().mean() for o in d) / 32 for b, d in draws.items()}
    assert loss["full"] > loss["identity"]
    assert acc["full"] <= acc["identity"]
    clean_acc = sum((defended(x).argmax(1) == y).float().mean() for _ in range(8)) / 8
    assert clean_acc > 0.9 and acc["full"] < clean_acc  # a working purifier, a working attack


def test_strongest_per_example_keeps_the_higher_loss_candidate():
    purifier, classifier, x, y = _tiny_trained_setup()
    model = PurifiedClassifier(purifier, classifier, sample=False)
    x_adv = pgd(model, x, y, 0.3, 0.03, 5, generator=torch.Generator().manual_seed(1))
    best = strongest_per_example(model, [x, x_adv], y)
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(c), y, reduction="none") for c in (x, x_adv)])
        picked = F.cross_entropy(model(best), y, reduction="none")
    assert torch.allclose(picked, losses.max(0).values)
    assert not torch.equal(best, x) and not torch.equal(best, x_adv)  # a per-example mix


@pytest.mark.parametrize("call", [
    lambda: uniform_quantise(torch.zeros(2), 0.0),
    lambda: QuantisedVAEPurifier(0),
    lambda: QuantisedVAEPurifier(64, quant_step=-1.0),
    lambda: QuantisedVAEPurifier(64).purify(torch.rand(2, 1, 4, 4)),
    lambda: purifier_loss(torch.rand(2, 4), torch.rand(2, 5), torch.zeros(2, 1), None),
    lambda: purifier_loss(torch.rand(2, 4), torch.rand(2, 4), torch.zeros(2, 1), None, -1.0),
    lambda: PurifiedClassifier(QuantisedVAEPurifier(4), torch.nn.Linear(4, 2), backward="bpda"),
    lambda: strongest_per_example(torch.nn.Linear(4, 2), [], torch.tensor([0])),
    lambda: strongest_per_example(torch.nn.Linear(4, 2), [torch.rand(1, 4), torch.rand(1, 3)],
                                  torch.tensor([0])),
])
def test_bad_arguments_raise(call):
    with pytest.raises(PriorlabError):
        call()


def test_reproduction_smoke_all_arms_and_method_differs_from_baseline():
    cfg = p042_purifier.CLAIM.tiers["smoke"]
    outs = {arm: p042_purifier.run(arm, cfg, seed=0) for arm in p042_purifier.CLAIM.arms}
    names = {p042_purifier.CLAIM.metric, *p042_purifier.CLAIM.extra_metrics}
    for out in outs.values():
        assert names <= set(out.metrics)
        assert all(0.0 <= v <= 1.0 for v in out.metrics.values())
        assert out.resolution["pgd_greybox_acc"] == pytest.approx(1 / cfg["n_test"])
    # same seed, same classifier and grey-box inputs: only the defence differs
    assert outs["quantised"].info["undefended_clean_acc"] == outs["none"].info["undefended_clean_acc"]
    assert outs["quantised"].metrics["pgd_greybox_acc"] != outs["none"].metrics["pgd_greybox_acc"]
    none = outs["none"].metrics  # without a defence the adaptive attacks are the grey-box ones
    assert none["pgd_adaptive_acc"] == none["pgd_fullgrad_acc"] == none["pgd_greybox_acc"]
    with pytest.raises(PriorlabError):
        p042_purifier.run("quantized", cfg, seed=0)


def test_claim_declares_every_clause_and_the_paper_attack_size():
    claim = p042_purifier.CLAIM
    named = {c.clause for c in claim.comparisons} | {g.clause for g in claim.guards}
    assert set(claim.clauses) == named | {u.clause for u in claim.untested}
    full = claim.tiers["full"]
    assert (full["eps"], full["pgd_alpha"], full["pgd_steps"]) == (0.3, 0.01, 40)
    assert claim.revision >= 2 and "pgd_adaptive_acc" in {g.metric for g in claim.guards}


def test_card_usage_runs():
    from priorlab.registry import get
    namespace = {}
    exec(get("quantised-purifier").usage, namespace)
    assert namespace["x_adaptive"].shape == namespace["x"].shape


# ------------------------------------------------------------------ issue 16: no silent NaN/inf

def _loss_inputs(batch=2):
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.rand(batch, 6, generator=g), reconstruction=torch.rand(batch, 6, generator=g),
                mu=torch.randn(batch, 3, generator=g), logvar=torch.randn(batch, 3, generator=g))


@pytest.mark.parametrize("name, value", [
    ("x", float("nan")), ("reconstruction", float("inf")), ("mu", float("nan")),
    ("logvar", float("inf")),
])
def test_purifier_loss_refuses_nonfinite_inputs(name, value):
    # they gave a NaN/inf loss silently
    kwargs = _loss_inputs()
    kwargs[name] = kwargs[name].clone()
    kwargs[name][0, 0] = value
    with pytest.raises(PriorlabError, match=rf"^purifier_loss: {name} contains 1 NaN|^purifier_loss: "
                                            rf"{name} contains 0 NaN"):
        purifier_loss(**kwargs)


@pytest.mark.parametrize("change, named", [
    (lambda kw: _loss_inputs(batch=0), "x is empty"),
    (lambda kw: dict(kw, logvar=kw["logvar"][:, :2]), "logvar must have shape"),
    (lambda kw: dict(kw, reconstruction=(kw["reconstruction"] > 0.5).long()),
     "reconstruction must have dtype"),
    (lambda kw: dict(kw, x=-kw["x"]), r"x must lie in \[0, 1\]"),
    (lambda kw: dict(kw, logvar=kw["logvar"] + 1e3), "the KL term of mu and logvar overflows"),
])
def test_purifier_loss_bad_inputs_name_the_argument(change, named):
    # an empty batch, mismatched mu/logvar, an integer reconstruction raised raw torch errors;
    # negative pixels or a huge logvar gave a meaningless or infinite loss
    with pytest.raises(PriorlabError, match=rf"^purifier_loss: {named}"):
        purifier_loss(**change(_loss_inputs()))


@pytest.mark.parametrize("z, named", [
    ([0.2, 0.7], "z must be a torch.Tensor"),
    (torch.tensor([0.2, 0.7], dtype=torch.complex64), "z must have dtype float"),
    (torch.tensor([float("nan"), 0.7]), "z contains NaN"),
])
def test_uniform_quantise_bad_z_is_named(z, named):
    # a list gave TypeError, complex NotImplementedError, NaN came back as NaN
    with pytest.raises(PriorlabError, match=rf"^uniform_quantise: {named}"):
        uniform_quantise(z, 0.5)
