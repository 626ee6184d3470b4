"""Paper 41: nested dropout, co-teaching selection and schedule, cards and reproduction."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.data.noise import symmetric_flip_noise, symmetric_noise
from priorlab.errors import PriorlabError
from priorlab.functional.coteaching import (
    coteaching_loss,
    forget_rate_schedule,
    num_remembered,
    small_loss_indices,
)
from priorlab.nn.nested_dropout import (
    NestedDropout,
    best_truncation,
    logits_at_every_truncation,
    nested_dropout_distribution,
)
from priorlab.registry import get


# ---------------------------------------------------------------- nested dropout distribution

def test_distribution_by_hand():
    # sigma=2, mu=0, m=1,2,3: weights exp(-1/4), exp(-1), exp(-9/4)
    w = [math.exp(-0.25), math.exp(-1.0), math.exp(-2.25)]
    expected = torch.tensor([x / sum(w) for x in w], dtype=torch.float64)
    torch.testing.assert_close(nested_dropout_distribution(3, sigma=2.0), expected)
    # mu shifts the mode: mu=2 puts the most mass on m=2
    assert int(nested_dropout_distribution(3, sigma=1.0, mu=2.0).argmax()) == 1


def test_distribution_survives_a_far_mean():
    probs = nested_dropout_distribution(4, sigma=0.1, mu=100.0)  # naive exp underflows to 0
    assert torch.isfinite(probs).all() and probs.sum().item() == pytest.approx(1.0)
    assert probs[-1].item() == pytest.approx(1.0)


# ---------------------------------------------------------------- NestedDropout module

def _kept_count(out: torch.Tensor) -> int:
    nonzero = (out != 0).any(dim=0)
    return int(nonzero.sum())


def test_training_keeps_a_prefix_of_channels_per_batch():
    layer = NestedDropout(6, sigma=3.0, seed=0)
    x = torch.rand(5, 6) + 0.5  # all nonzero, so zeros mark dropped channels
    for _ in range(20):
        out = layer(x)
        m = _kept_count(out)
        assert 1 <= m <= 6
        torch.testing.assert_close(out[:, :m], x[:, :m])  # kept channels are not rescaled
        assert (out[:, m:] == 0).all()
        assert ((out != 0).sum(dim=1) == m).all()  # the same m for the whole batch


def test_empirical_frequencies_match_the_distribution():
    layer = NestedDropout(5, sigma=2.0, seed=1)
    draws = layer.sample_channels(20_000)
    freq = torch.bincount(draws - 1, minlength=5).double() / draws.numel()
    torch.testing.assert_close(freq, nested_dropout_distribution(5, 2.0), atol=0.012, rtol=0)


def test_per_sample_draws_differ_across_rows():
    layer = NestedDropout(8, sigma=4.0, per_sample=True, seed=2)
    out = layer(torch.ones(64, 8))
    kept = (out != 0).sum(dim=1)
    assert kept.unique().numel() > 1
    for row, m in zip(out, kept):  # each row is still a prefix
        assert (row[:m] == 1).all() and (row[m:] == 0).all()


def test_channel_dim_of_feature_maps():
    layer = NestedDropout(4, sigma=1.0, seed=3)
    x = torch.ones(2, 4, 3, 3)
    out = layer(x)
    m = int((out[0, :, 0, 0] != 0).sum())
    assert (out[:, :m] == 1).all() and (out[:, m:] == 0).all()


def test_eval_mode_identity_or_fixed_truncation():
    layer = NestedDropout(4, sigma=1.0).eval()
    x = torch.randn(3, 4)
    assert torch.equal(layer(x), x)
    layer.eval_channels = 2
    expected = x.clone()
    expected[:, 2:] = 0
    assert torch.equal(layer(x), expected)


def test_dropped_channels_get_no_gradient():
    layer = NestedDropout(5, sigma=1.0, seed=4)
    x = torch.randn(3, 5, requires_grad=True)
    out = layer(x)
    m = _kept_count(out)
    out.sum().backward()
    assert (x.grad[:, :m] == 1).all() and (x.grad[:, m:] == 0).all()


def test_seeded_generator_round_trips_through_state_dict():
    a = NestedDropout(10, sigma=3.0, seed=5)
    a.sample_channels(7)
    state = a.state_dict()
    b = NestedDropout(10, sigma=3.0, seed=99)
    b.load_state_dict(state)
    assert torch.equal(a.sample_channels(50), b.sample_channels(50))
    a.eval_channels = 3
    c = NestedDropout(10, sigma=3.0)
    c.load_state_dict(a.state_dict())
    assert c.eval_channels == 3


def test_global_generator_is_used_without_seed():
    layer = NestedDropout(10, sigma=3.0)
    torch.manual_seed(0)
    first = layer.sample_channels(20)
    torch.manual_seed(0)
    assert torch.equal(first, layer.sample_channels(20))


@pytest.mark.parametrize("call", [
    lambda: NestedDropout(0),
    lambda: NestedDropout(4, sigma=-1.0),
    lambda: NestedDropout(4, sigma=float("inf")),
    lambda: NestedDropout(4, mu=float("nan")),
    lambda: NestedDropout(4, eval_channels=0),
    lambda: NestedDropout(4, eval_channels=5),
    lambda: NestedDropout(4, seed=1.5),
    lambda: NestedDropout(4)(torch.zeros(2, 3)),
    lambda: NestedDropout(4)(torch.zeros(2, 4, dtype=torch.long)),
    lambda: NestedDropout(4, dim=0, per_sample=True)(torch.zeros(4, 2)),
    lambda: logits_at_every_truncation(torch.zeros(2, 3), nn.Linear(4, 2)),
    lambda: best_truncation(torch.zeros(2, 3), torch.tensor([0, 1])),
])
def test_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


def test_logits_at_every_truncation_match_explicit_masks():
    torch.manual_seed(0)
    head = nn.Linear(5, 3)
    features = torch.randn(4, 5)
    all_logits = logits_at_every_truncation(features, head)
    assert all_logits.shape == (5, 4, 3)
    for m in range(1, 6):
        masked = features.clone()
        masked[:, m:] = 0
        torch.testing.assert_close(all_logits[m - 1], head(masked))


def test_best_truncation_prefers_fewest_channels_on_ties():
    targets = torch.tensor([0, 1])
    right = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    wrong = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    logits = torch.stack([wrong, right, right, wrong])  # m=2 and m=3 tie at 100%
    assert best_truncation(logits, targets) == (2, 1.0)


# ---------------------------------------------------------------- co-teaching

def test_num_remembered_floors_without_float_artifacts():
    assert num_remembered(10, 0.2) == 8
    assert num_remembered(10, 0.9) == 1  # 1 - 0.9 = 0.0999... in floating point
    assert num_remembered(7, 0.5) == 3
    assert num_remembered(5, 0.0) == 5


def test_small_loss_indices_by_hand():
    # per-sample CE: row 0 log(1+e^-3) (small), row 1 log(1+e^3) (large), row 2 log 2
    logits = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 1, 1])
    assert small_loss_indices(logits, targets, 0.0).tolist() == [0, 2, 1]
    assert small_loss_indices(logits, targets, 0.3).tolist() == [0, 2]  # floor(2.1)
    assert small_loss_indices(logits, targets, 0.5).tolist() == [0]


def test_coteaching_loss_exchanges_selections():
    targets = torch.tensor([0, 1, 0, 1])
    # net 1 finds samples 0 and 1 easy; net 2 finds samples 2 and 3 easy
    logits1 = torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    logits2 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [4.0, 0.0], [0.0, 4.0]], requires_grad=True)
    loss1, loss2 = coteaching_loss(logits1, logits2, targets, forget_rate=0.5)
    # net 1 learns from net 2's picks (2, 3): CE = log(1 + e) each
    assert loss1.item() == pytest.approx(math.log(1 + math.e))
    assert loss2.item() == pytest.approx(math.log(1 + math.e))
    (loss1 + loss2).backward()
    assert (logits1.grad[:2] == 0).all() and (logits1.grad[2:] != 0).all()
    assert (logits2.grad[2:] == 0).all() and (logits2.grad[:2] != 0).all()


def test_coteaching_at_zero_forget_rate_is_plain_cross_entropy():
    torch.manual_seed(0)
    a, b, y = torch.randn(6, 3), torch.randn(6, 3), torch.randint(0, 3, (6,))
    loss1, loss2 = coteaching_loss(a, b, y, 0.0)
    assert loss1.item() == pytest.approx(F.cross_entropy(a, y).item())
    assert loss2.item() == pytest.approx(F.cross_entropy(b, y).item())


def test_forget_rate_schedule_is_numpy_linspace_then_constant():
    got = [forget_rate_schedule(e, 0.2, num_gradual=5) for e in range(7)]
    assert got == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert forget_rate_schedule(0, 0.3, num_gradual=0) == pytest.approx(0.3)
    assert forget_rate_schedule(0, 0.3, num_gradual=1) == 0.0
    assert forget_rate_schedule(2, 0.5, num_gradual=3, exponent=2.0) == pytest.approx(0.25)


def test_forget_rate_at_the_first_trained_epoch_of_each_official_loop():
    # Han et al. train from schedule index 1: their first epoch forgets 0.4 / (5 - 1) = 0.1;
    # Nested-Co-teaching uses index epochID - 1 = 0 for its first epoch: nothing forgotten
    assert forget_rate_schedule(1, 0.4, num_gradual=5) == pytest.approx(0.1)
    assert forget_rate_schedule(0, 0.4, num_gradual=5) == 0.0
    assert forget_rate_schedule(1, 0.3, num_gradual=10) == pytest.approx(0.3 / 9)


# ---------------------------------------------------------------- symmetric noise (official)

def test_symmetric_flip_noise_never_keeps_the_true_label():
    labels = torch.arange(10).repeat_interleave(torch.tensor([7, 13, 20, 1, 0, 9, 11, 5, 30, 4]))
    for seed in range(5):
        noisy, mask = symmetric_flip_noise(labels, 0.4, 10, seed=seed)
        assert (noisy[mask] != labels[mask]).all()  # every flip lands on another class
        assert torch.equal(noisy[~mask], labels[~mask])
        for c in range(10):  # ceil(rate * n_c) flipped within each class, as the official loop
            n_c = int((labels == c).sum())
            assert int(mask[labels == c].sum()) == math.ceil(0.4 * n_c)
    assert torch.equal(symmetric_flip_noise(labels, 0.4, 10, seed=3)[0],
                       symmetric_flip_noise(labels, 0.4, 10, seed=3)[0])


def test_symmetric_flip_noise_is_uniform_over_the_other_classes():
    labels = torch.zeros(40_000, dtype=torch.long)
    noisy, mask = symmetric_flip_noise(labels, 1.0, 5, seed=0)
    assert bool(mask.all())
    freq = torch.bincount(noisy, minlength=5).double() / labels.numel()
    torch.testing.assert_close(freq, torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25],
                                                  dtype=torch.float64), atol=0.01, rtol=0)


def test_symmetric_flip_noise_corrupts_more_than_the_redrawing_generator():
    labels = torch.arange(10).repeat(300)
    flipped = symmetric_flip_noise(labels, 0.4, 10, seed=0)[1].float().mean().item()
    redrawn = symmetric_noise(labels, 0.4, 10, seed=0)[1].float().mean().item()
    assert flipped == pytest.approx(0.4)
    assert redrawn == pytest.approx(0.36, abs=0.02)  # 0.4 * 9/10: the true class is redrawn


@pytest.mark.parametrize("call", [
    lambda: symmetric_flip_noise(torch.tensor([0, 1, 2]), 0.5, 2),
    lambda: symmetric_flip_noise(torch.tensor([0, 1]), 1.5, 2),
    lambda: symmetric_flip_noise(torch.tensor([0.0, 1.0]), 0.5, 2),
    lambda: symmetric_flip_noise(torch.tensor([0, 1]), 0.5, 1),
])
def test_symmetric_flip_noise_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


@pytest.mark.parametrize("call", [
    lambda: num_remembered(10, 1.0),
    lambda: num_remembered(10, -0.1),
    lambda: small_loss_indices(torch.zeros(2, 3), torch.tensor([0, 1]), 0.6),  # keeps none
    lambda: small_loss_indices(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), 0.1),
    lambda: small_loss_indices(torch.zeros(2, 3), torch.tensor([0, 3]), 0.1),
    lambda: small_loss_indices(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), 0.0),
    lambda: coteaching_loss(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long),
                            0.1),
    lambda: forget_rate_schedule(-1, 0.2),
    lambda: forget_rate_schedule(0, 0.2, num_gradual=2.5),
    lambda: forget_rate_schedule(0, 0.2, exponent=0.0),
])
def test_coteaching_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


# ---------------------------------------------------------------- cards and reproduction

def test_cards_point_to_one_reproduction():
    nested, coteach = get("nested-dropout"), get("nested-coteaching")
    assert nested.component is NestedDropout and coteach.component is coteaching_loss
    assert nested.reproduction == coteach.reproduction == "p041_nested_coteaching"
    assert coteach.kind == "system" and coteach.example is None
    assert nested.paper.seed_id == coteach.paper.seed_id == 41


def test_claim_compares_the_combination_with_every_other_arm():
    from priorlab.reproductions.p041_nested_coteaching import CLAIM
    assert len(CLAIM.arms) == 10
    for noise in ("sym", "asym"):
        mine = [c for c in CLAIM.comparisons if c.method == f"nested_coteaching_{noise}"]
        assert {c.baseline for c in mine} == {f"{m}_{noise}"
                                              for m in ("ce", "dropout", "nested", "coteaching")}
        assert all(c.card == "nested-coteaching" for c in mine)
        nested = [c for c in CLAIM.comparisons if c.method == f"nested_{noise}"]
        assert [(c.baseline, c.card) for c in nested] == [(f"ce_{noise}", "nested-dropout")]
    named = {c.clause for c in CLAIM.comparisons} | {u.clause for u in CLAIM.untested}
    assert named == set(CLAIM.clauses) and "" not in named
    assert CLAIM.revision >= 2


def test_full_tier_follows_the_official_stage_lengths_within_the_declared_budget():
    from priorlab.reproductions.p041_nested_coteaching import CLAIM
    full = CLAIM.tiers["full"]
    assert full["finetune_epochs"] == 100  # co_teaching_resnet/run_cifar.sh --nbEpoch 100
    # stage one: both phases at the same fraction of the official 43 + 350 epochs
    assert full["warmup_epochs"] / full["epochs"] == pytest.approx(6000 / 140 / 350, rel=0.05)
    total = full["warmup_epochs"] + full["epochs"] + full["finetune_epochs"]
    assert CLAIM.budget.ours == total and CLAIM.budget.paper == 43 + 350 + 100
    assert CLAIM.budget.under  # negative results must read as inconclusive, not refuted


def test_schedule_warms_up_linearly_then_steps_down():
    from priorlab.reproductions.p041_nested_coteaching import _Schedule
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = _Schedule([opt], lr=0.1, warmup_epochs=2, epochs=10, steps_per_epoch=4,
                         milestones=(0.5, 0.8))
    lrs = []
    for epoch, step in [(0, 0), (0, 3), (0, 7), (0, 8), (4, 8), (5, 8), (8, 8)]:
        schedule.set(epoch, step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1 / 8, 0.1 * 4 / 8, 0.1, 0.1, 0.1, 0.01, 0.001])


def test_reproduction_smoke_every_arm():
    from priorlab.reproductions.p041_nested_coteaching import CLAIM, _stage_one, run
    cfg = CLAIM.tiers["smoke"]
    outputs = {}
    for arm in CLAIM.arms:
        out = outputs[arm] = run(arm, cfg, seed=0)
        assert set(out.metrics) == {CLAIM.metric, *CLAIM.extra_metrics}, arm
        assert all(math.isfinite(v) for v in out.metrics.values()), arm
        assert 0.0 <= out.metrics["test_acc"] <= 1.0
        assert out.resolution["test_acc"] == pytest.approx(1 / 360)
        curve = out.curves["val_acc"]
        assert len(curve["x"]) == len(curve["y"]) > 0
        assert curve["x"][0] == cfg["warmup_epochs"] + 1  # no evaluation during the warm-up
        assert out.info["best_epoch"] >= cfg["warmup_epochs"]
        if arm.startswith("nested"):  # the validated K compresses the 32-d feature
            assert 1 <= out.metrics["kept_channels"] <= 32
        else:
            assert out.metrics["kept_channels"] == 32
    # the official symmetric generator: exactly the selected share is wrong (ceil per class)
    assert outputs["ce_sym"].info["noise_rate"] >= cfg["sym_rate"]
    # each method arm differs from its baseline at the same seed and data
    for method, baseline in [("nested_coteaching", "coteaching"), ("nested_coteaching", "nested"),
                             ("nested", "ce"), ("dropout", "ce")]:
        assert (outputs[f"{method}_sym"].metrics != outputs[f"{baseline}_sym"].metrics), method
    _stage_one.cache_clear()  # deterministic from scratch, not only through the memo
    fresh = run("nested_coteaching_sym", cfg, seed=0)
    assert fresh.metrics == outputs["nested_coteaching_sym"].metrics


@pytest.mark.parametrize("logits, targets", [
    (torch.zeros(3, 0, 4), torch.zeros(0, dtype=torch.long)),  # empty batch: no NaN accuracy
    (torch.zeros(3, 2, 4, dtype=torch.bool), torch.zeros(2, dtype=torch.long)),
    (torch.zeros(3, 2, 4), torch.zeros(2, dtype=torch.complex64)),
])
def test_best_truncation_refuses_empty_or_non_float_input(logits, targets):
    from priorlab.nn.nested_dropout import best_truncation
    with pytest.raises(PriorlabError, match="truncation_logits|targets"):
        best_truncation(logits, targets)


def test_small_loss_indices_refuses_complex_targets():
    from priorlab.functional.coteaching import small_loss_indices
    with pytest.raises(PriorlabError, match="targets"):
        small_loss_indices(torch.zeros(4, 3), torch.zeros(4, dtype=torch.complex64), 0.25)
