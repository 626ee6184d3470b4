import copy
import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.rrcm import (
    batch_step_indices,
    ema_update,
    info_nce,
    karras_sigmas,
    noise_consistency_loss,
    rrcm_pretrain_loss,
)
from priorlab.methods.rrcm import NoiseConditionedEncoder, NoisyClassifier
from priorlab.reproductions import p027_rrcm


def test_karras_sigmas_endpoints_and_monotone():
    s = karras_sigmas(20, 0.002, 80.0, 7.0)
    assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.002, rel=1e-4)
    assert (s[1:] < s[:-1]).all()
    mid = karras_sigmas(3, 1.0, 16.0, 2.0)[1]  # ((4 + 1) / 2)^2
    assert mid == pytest.approx(6.25)


def test_info_nce_known_values():
    eye = torch.eye(3)
    # positives aligned (cos 1), negatives orthogonal (cos 0): log(e^{1/t} + 2) - 1/t
    tau = 0.5
    expected = math.log(math.exp(2.0) + 2.0) - 2.0
    assert torch.allclose(info_nce(eye, eye, tau), torch.full((3,), expected))
    # all keys identical: uniform over the batch -> log(batch)
    assert torch.allclose(info_nce(eye, torch.ones(3, 3), 0.2), torch.full((3,), math.log(3)))


class _Identity(torch.nn.Module):
    """A stand-in encoder whose two projections are its input, whatever the noise level."""

    def forward(self, x, sigma):
        return x, x


def test_contrastive_term_is_symmetric_sum_of_both_directions():
    # views a = (e1, e2), b = (e1, (e1 + e2)/sqrt 2); tau 1, zero noise, so the projections are the
    # views. cos(a_i, b_j) = [[1, r], [0, r]] with r = 1/sqrt 2.
    r = 1 / math.sqrt(2)
    view_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    view_b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a_to_b = (math.log(math.e + math.exp(r)) - 1 + math.log(1 + math.exp(r)) - r) / 2
    b_to_a = (math.log(math.e + 1) - 1 + math.log(2.0)) / 2  # logits transposed: [[1, 0], [r, r]]
    terms = rrcm_pretrain_loss(_Identity(), _Identity(), view_a, view_a, view_b,
                               karras_sigmas(3), torch.tensor([0, 0]), tau=1.0,
                               noise=torch.zeros(2, 2))
    assert float(terms["contrastive"]) == pytest.approx(a_to_b + b_to_a, rel=1e-6)
    assert a_to_b != pytest.approx(b_to_a)  # so one direction doubled would be caught
    # adjacent noise levels with zero noise give identical points: InfoNCE of a against itself
    same = math.log(math.e + 1) - 1
    assert float(terms["consistency"]) == pytest.approx(same, rel=1e-6)


def test_batch_step_indices_one_level_per_batch():
    gen = torch.Generator().manual_seed(0)
    draws = [batch_step_indices(20, 16, gen) for _ in range(50)]
    assert all(d.shape == (16,) and (d == d[0]).all() for d in draws)
    firsts = torch.stack([d[0] for d in draws])
    assert firsts.min() >= 0 and firsts.max() <= 18 and len(firsts.unique()) > 5


def test_noise_consistency_zero_kl_for_identical_copies():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    avg = torch.softmax(logits, 1)
    entropy = -(avg * avg.log()).sum(1).mean()
    assert noise_consistency_loss([logits, logits.clone()], lbd=20.0, eta=0.5) == \
        pytest.approx(float(0.5 * entropy))
    assert noise_consistency_loss([logits, -logits], 20.0, 0.0) > 0


def test_noise_consistency_known_value_direction_and_entropy_sign():
    # softmaxes (1/4, 3/4) and (3/4, 1/4): mean (1/2, 1/2), KL(mean || p_j) = ln(4/3) / 2 each
    # (KL(p_j || mean) would be 0.131), entropy of the mean ln 2, added (minimised), not subtracted
    third = math.log(3.0)
    logits = [torch.tensor([[0.0, third]]), torch.tensor([[third, 0.0]])]
    expected = 20.0 * 0.5 * math.log(4 / 3) + 0.5 * math.log(2.0)
    assert float(noise_consistency_loss(logits, lbd=20.0, eta=0.5)) == pytest.approx(expected)


def test_pretrain_loss_grads_only_online_and_ema_moves_target():
    torch.manual_seed(0)
    enc = NoiseConditionedEncoder(16, hidden=16, proj_dim=8)
    target = copy.deepcopy(enc).requires_grad_(False)
    x = torch.rand(6, 16)
    sigmas = karras_sigmas(5, 0.002, 2.0)
    terms = rrcm_pretrain_loss(enc, target, x, x + 0.01, x - 0.01, sigmas, torch.arange(6) % 4)
    assert set(terms) == {"contrastive", "consistency"}
    sum(terms.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
    assert all(p.grad is None for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    ema_update(target, enc, 0.9)
    after = list(target.parameters())
    assert all(torch.allclose(a, 0.9 * b + 0.1 * (b + 1.0)) for a, b in zip(after, before))


def test_encoder_features_depend_on_sigma():
    torch.manual_seed(0)
    enc = NoiseConditionedEncoder(4, hidden=8, proj_dim=4)
    x = torch.rand(3, 4)
    assert not torch.allclose(enc.features(x, 0.25), enc.features(x, 1.0))
    assert NoisyClassifier(enc, 2, 0.25)(x).shape == (3, 2)


@pytest.mark.parametrize("call", [
    lambda: karras_sigmas(1),
    lambda: karras_sigmas(5, 1.0, 0.5),
    lambda: info_nce(torch.rand(3, 4), torch.rand(2, 4)),
    lambda: info_nce(torch.rand(3, 4), torch.rand(3, 4), tau=0.0),
    lambda: noise_consistency_loss([torch.rand(2, 3)]),
    lambda: ema_update(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), 1.5),
    lambda: rrcm_pretrain_loss(NoiseConditionedEncoder(4), NoiseConditionedEncoder(4),
                               torch.rand(2, 4), torch.rand(2, 4), torch.rand(2, 4),
                               karras_sigmas(5), torch.tensor([0, 4])),
    lambda: batch_step_indices(1, 4),
    lambda: batch_step_indices(5, 0),
])
def test_bad_arguments_raise(call):
    with pytest.raises(PriorlabError):
        call()


def test_grids_same_size_sorted_and_shared_lr():
    grids = p027_rrcm.CLAIM.tiers["full"]["grids"]
    sizes = {arm: math.prod(len(v) for v in grid.values()) for arm, grid in grids.items()}
    assert set(sizes) == set(p027_rrcm.ARMS) and len(set(sizes.values())) == 1
    assert grids["rrcm"]["lr"] == grids["gaussian"]["lr"]  # the same lr grid for both arms
    assert all(list(v) == sorted(v) for grid in grids.values() for v in grid.values())
    # the certified sigma lies inside the baseline's training-noise grid
    assert grids["gaussian"]["train_sigma"][0] < 0.5 < grids["gaussian"]["train_sigma"][-1]
    assert p027_rrcm.CLAIM.tiers["smoke"]["grids"] == grids  # smoke exercises the same grid


def test_reproduction_smoke_arms_differ_and_select_the_best_validation_setting():
    cfg = p027_rrcm.CLAIM.tiers["smoke"]
    outs = {arm: p027_rrcm.run(arm, cfg, seed=0) for arm in p027_rrcm.CLAIM.arms}
    for arm, out in outs.items():
        assert {p027_rrcm.CLAIM.metric, *p027_rrcm.CLAIM.extra_metrics} <= set(out.metrics)
        assert all(math.isfinite(v) for v in out.metrics.values())
        acc = [out.metrics[f"cert_acc_r{k}"] for k in ("000", "025", "050", "100")]
        assert acc == sorted(acc, reverse=True)  # certified accuracy falls with the radius
        assert out.metrics["cert_acc_r050_minus_r000"] == pytest.approx(acc[2] - acc[0])
        assert out.resolution[p027_rrcm.CLAIM.metric] == pytest.approx(1 / cfg["n_test"])
        grid = cfg["grids"][arm]
        assert set(out.tuning) == set(grid)
        assert all(out.tuning[k]["selected"] in grid[k] for k in grid)
        scored = out.info["val_acr_by_setting"]
        assert len(scored) == math.prod(len(v) for v in grid.values())
        best = max(scored, key=lambda s: s["val_acr"])
        assert all(best[k] == out.tuning[k]["selected"] for k in grid)
    # same seed, different method: the two arms must not produce the same classifier
    assert outs["rrcm"].info["val_acr_by_setting"] != outs["gaussian"].info["val_acr_by_setting"]
    assert outs["rrcm"].curves["certified_accuracy"] != outs["gaussian"].curves["certified_accuracy"] \
        or outs["rrcm"].metrics["noisy_acc"] != outs["gaussian"].metrics["noisy_acc"]
    assert "pretrain_loss" in outs["rrcm"].curves and "pretrain_loss" not in outs["gaussian"].curves


def test_finetune_optimizer_lrs_and_schedule():
    cfg = p027_rrcm.CLAIM.tiers["full"]
    model = NoisyClassifier(NoiseConditionedEncoder(4, hidden=8, proj_dim=4), 3, 0.5)
    opt, schedule = p027_rrcm._finetune_optimizer(model, dict(cfg, finetune_epochs=10), 2e-4, 0.75)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.0
    base = 2e-4 * cfg["batch_size"] / 256  # rrcm_tune.py scales lr by batch / 256
    # one warm-up epoch out of 10 (already at full lr); layer-wise decay 0.75 below the head
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([base * 0.75 ** 2, base * 0.75,
                                                                 base])
    assert opt.param_groups[-1]["params"][0] is model.head.weight  # the head is trained
    for _ in range(10):
        opt.step()
        schedule.step()
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine down to 0
    flat, _ = p027_rrcm._finetune_optimizer(model, dict(cfg, finetune_epochs=10), 2e-4, 1.0)
    assert [g["lr"] for g in flat.param_groups] == pytest.approx([base] * 3)  # gaussian: no decay


def test_consistency_finetune_does_not_collapse_on_digits():
    # At the full tier, Adam 1e-3 (10x the official lr, no schedule) drove this fine-tune into
    # predicting one class (val noisy accuracy 0.10) after ~35 epochs, without any pretraining.
    cfg = p027_rrcm.CLAIM.tiers["full"]
    data = p027_rrcm._data(cfg["dataset"])
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = NoisyClassifier(NoiseConditionedEncoder(64, cfg["hidden"], cfg["proj_dim"]), 10,
                            cfg["sigma"])
    p027_rrcm._finetune(model, data, cfg, gen, lr=2e-4, lbd=20.0, layer_decay=0.75)
    with torch.no_grad():
        noisy = data.x_val + cfg["sigma"] * torch.randn(data.x_val.shape, generator=gen)
        pred = model(noisy).argmax(1)
    assert float((pred == data.y_val).float().mean()) > 0.5
    assert pred.bincount(minlength=10).max() < 0.3 * len(pred)


# ------------------------------------------------------------------ issue 16: bad input, NaN gradients

@pytest.mark.parametrize("query, key, named", [
    (None, torch.rand(3, 4), "query"),
    (torch.rand(3, 4), 1.5, "key"),
    (torch.rand(3, 4).numpy(), torch.rand(3, 4), "query"),
    (torch.rand(3, 4) > 0.5, torch.rand(3, 4), "query"),
    (torch.rand(3, 4), torch.rand(3, 4, dtype=torch.complex64), "key"),
    (torch.rand(3, 4), torch.rand(3, 4, dtype=torch.float64), "query and key"),
    (torch.full((3, 4), float("nan")), torch.rand(3, 4), "query"),
])
def test_info_nce_checks_its_inputs(query, key, named):
    # None/float gave AttributeError, numpy TypeError, bool/complex/mixed dtypes torch errors
    with pytest.raises(PriorlabError, match=rf"^info_nce: {named} "):
        info_nce(query, key, 0.2)


def test_info_nce_extreme_magnitudes_keep_their_direction():
    # F.normalize turned rows of 1e30 into zeros: every loss was log(batch)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert torch.allclose(info_nce(q * 1e30, k * 1e-30), info_nce(q, k), atol=1e-6)
    with pytest.raises(PriorlabError, match=r"^info_nce: tau "):
        info_nce(q, k, 1e-300)


@pytest.mark.parametrize("kwargs, named", [
    (dict(logits=[torch.zeros(0, 3), torch.zeros(0, 3)]), "logits"),
    (dict(logits=[torch.rand(2, 3), torch.rand(2, 3)], lbd=torch.tensor([0.5, 0.5])), "lbd"),
    (dict(logits=[torch.rand(2, 3), torch.rand(2, 3)], eta="0.5"), "eta"),
    (dict(logits=[torch.rand(2, 3).numpy(), torch.rand(2, 3)]), "logits"),
    (dict(logits=[torch.rand(2, 3), torch.rand(2, 3).double()]), "logits"),
])
def test_noise_consistency_loss_checks_its_inputs(kwargs, named):
    # an empty batch gave NaN, the others raw torch errors / AttributeError
    with pytest.raises(PriorlabError, match=rf"^noise_consistency_loss: {named}"):
        noise_consistency_loss(**kwargs)


def _noise_consistency_before_issue_16(logits, lbd, eta):
    # the former direct formula (F.kl_div on the averaged softmax; its target gradient is
    # log(target) + 1 = -inf where a probability underflows)
    avg = sum(torch.softmax(lg, dim=1) for lg in logits) / len(logits)
    kl = sum(torch.nn.functional.kl_div(torch.log_softmax(lg, dim=1), avg, reduction="none").sum(1)
             for lg in logits) / len(logits)
    entropy = -(avg * torch.log(avg.clamp(min=1e-20))).sum(1)
    return (lbd * kl + eta * entropy).mean()


def test_noise_consistency_log_space_form_matches_the_direct_one_on_ordinary_logits():
    g = torch.Generator().manual_seed(0)
    for m in (2, 3, 4):
        logits = [(torch.randn(8, 10, generator=g) * 3).requires_grad_() for _ in range(m)]
        new = noise_consistency_loss(logits, 20.0, 0.5)
        new_grads = torch.autograd.grad(new, logits)
        old = _noise_consistency_before_issue_16(logits, 20.0, 0.5)
        old_grads = torch.autograd.grad(old, logits)
        assert float(new.detach()) == pytest.approx(float(old.detach()), rel=1e-6)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(new_grads, old_grads))


def test_noise_consistency_gradients_stay_finite_for_large_logits():
    g = torch.Generator().manual_seed(0)
    logits = [(torch.randn(4, 3, generator=g) * 1e4).requires_grad_() for _ in range(2)]
    old = _noise_consistency_before_issue_16(logits, 20.0, 0.5)
    assert not all(torch.isfinite(gr).all() for gr in torch.autograd.grad(old, logits))  # the bug
    new = noise_consistency_loss(logits, 20.0, 0.5)
    assert float(new.detach()) == pytest.approx(float(old.detach()), rel=1e-6)
    assert all(torch.isfinite(gr).all() for gr in torch.autograd.grad(new, logits))
