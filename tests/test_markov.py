"""The HMM source (priorlab.data.markov) and Zhang's predictive-operator measures (seed 40)."""

import itertools
import math

import pytest
import torch

from priorlab.data.markov import HMM, noisy_cycle
from priorlab.errors import PriorlabError
from priorlab.methods.markov_categorical import (
    eigenfunction_alignment,
    information_surplus,
    predictive_eigenfunctions,
    predictive_similarity,
)
from priorlab.reproductions import p040_markov

T2 = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float64)
E2 = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.3, 0.6]], dtype=torch.float64)


def entropy(p):
    p = p[p > 0]
    return float(-(p * p.log()).sum())


# ---- the source --------------------------------------------------------------------------------


def test_stationary_distribution_and_validation():
    hmm = HMM(T2, E2)
    torch.testing.assert_close(hmm.stationary() @ T2, hmm.stationary())
    torch.testing.assert_close(hmm.stationary(), torch.tensor([0.75, 0.25], dtype=torch.float64))
    for bad in (lambda: HMM(T2 * 2, E2), lambda: HMM(T2[:, :1], E2), lambda: HMM(T2, E2[:1]),
                lambda: HMM(-T2, E2), lambda: HMM(T2, E2, initial=[0.5, 0.2]),
                lambda: HMM(torch.eye(2, dtype=torch.float64), E2),  # reducible: no unique pi
                lambda: noisy_cycle(6, 4, stay=0.5, advance=0.6, skip=0.1),
                lambda: HMM.random(1, 3)):
        with pytest.raises(PriorlabError):
            bad()


def test_forward_algorithm_matches_brute_force_over_state_paths():
    hmm = HMM(T2, E2)
    tokens = torch.tensor([0, 1, 2, 1])
    total = 0.0
    for path in itertools.product(range(2), repeat=4):
        p = hmm.initial[path[0]] * E2[path[0], tokens[0]]
        for t in range(1, 4):
            p = p * T2[path[t - 1], path[t]] * E2[path[t], tokens[t]]
        total += float(p)
    out = hmm.filter(tokens)
    assert float(out["log_likelihood"][0]) == pytest.approx(math.log(total), rel=1e-12)
    assert out["belief"].shape == (1, 4, 2) and out["next_token"].shape == (1, 4, 3)
    torch.testing.assert_close(out["belief"].sum(-1), torch.ones(1, 4, dtype=torch.float64))
    with pytest.raises(PriorlabError):
        hmm.filter(torch.tensor([0, 3]))


def test_windows_are_exact_and_agree_with_the_filter():
    hmm = noisy_cycle(6, 4)
    w = hmm.windows(3)
    assert w.tokens.shape == (64, 3) and float(w.prob.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(w.next_token.sum(1), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(w.token_after_next.sum(1), torch.ones(64, dtype=torch.float64))
    assert w.tokens[6].tolist() == [0, 1, 2]  # base-V order, first token most significant
    filtered = hmm.filter(w.tokens)
    torch.testing.assert_close(filtered["next_token"][:, -1], w.next_token)
    torch.testing.assert_close(filtered["belief"][:, -1], w.state)
    torch.testing.assert_close(filtered["log_likelihood"].exp(), w.prob)


def test_entropy_rate_of_a_markov_chain_is_exact():
    # emission = identity: the tokens are a Markov chain, H = sum_i pi_i H(T_i)
    hmm = HMM(T2, torch.eye(2, dtype=torch.float64))
    exact = float(sum(hmm.stationary()[i] * entropy(T2[i]) for i in range(2)))
    lower, upper = hmm.entropy_rate_bounds(1)
    assert lower == pytest.approx(exact, abs=1e-12) and upper == pytest.approx(exact, abs=1e-12)
    assert hmm.entropy_rate() == pytest.approx(exact, abs=1e-12)


def test_entropy_rate_bounds_tighten_and_match_the_likelihood():
    hmm = noisy_cycle(6, 4)
    bounds = [hmm.entropy_rate_bounds(k) for k in (1, 3, 5)]
    for (lo_a, hi_a), (lo_b, hi_b) in itertools.pairwise(bounds):
        assert lo_a <= lo_b + 1e-12 and hi_b <= hi_a + 1e-12 and lo_b <= hi_b
    lower, upper = bounds[-1]
    tokens, states = hmm.sample(200, 400, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == states.shape == (200, 400)
    estimate = float(-hmm.filter(tokens)["log_likelihood"].mean()) / 400
    assert lower - 0.01 < estimate < upper + 0.01
    with pytest.raises(PriorlabError, match="apart"):
        hmm.entropy_rate(tol=1e-9, max_windows=6 * 4 ** 4)


def test_sampling_is_reproducible_and_follows_the_stationary_law():
    hmm = HMM(T2, E2)
    a = hmm.sample(50, 200, generator=torch.Generator().manual_seed(1))
    b = hmm.sample(50, 200, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    freq = torch.bincount(a[0].flatten(), minlength=3).double() / a[0].numel()
    torch.testing.assert_close(freq, hmm.stationary() @ E2, atol=0.02, rtol=0)
    # emissions follow the state: state 0 never emits token 2
    assert not ((a[1] == 0) & (a[0] == 2)).any()


# ---- the predictive-similarity operator ---------------------------------------------------------


def test_operator_eigenfunctions_are_orthonormal_eigenpairs():
    w = noisy_cycle(6, 4).windows(3)
    kernel = predictive_similarity(w.next_token, w.prob)
    torch.testing.assert_close(kernel, kernel.T)
    values, functions = predictive_eigenfunctions(w.next_token, w.prob)
    assert functions.shape == (64, 3) and (values[:-1] >= values[1:]).all() and (values < 1).all()
    gram = functions.T @ (w.prob[:, None] * functions)
    torch.testing.assert_close(gram, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(w.prob @ functions, torch.zeros(3, dtype=torch.float64))  # not constant
    applied = kernel @ (w.prob[:, None] * functions)  # (T f)(c) = sum_c' p(c') K(c, c') f(c')
    torch.testing.assert_close(applied, functions * values)


def test_deterministic_next_tokens_give_unit_eigenvalues():
    # contexts 0,1 -> token 0, contexts 2,3 -> token 1, context 4 -> token 2: K = 1[same]/p(x)
    nxt = torch.eye(3, dtype=torch.float64)[[0, 0, 1, 1, 2]]
    prob = torch.tensor([0.1, 0.2, 0.3, 0.1, 0.3], dtype=torch.float64)
    values, functions = predictive_eigenfunctions(nxt, prob)
    torch.testing.assert_close(values, torch.ones(2, dtype=torch.float64))
    # eigenfunctions are constant on contexts that predict the same token
    assert torch.allclose(functions[0], functions[1]) and torch.allclose(functions[2], functions[3])
    with pytest.raises(PriorlabError):
        predictive_eigenfunctions(nxt, prob, k=3)
    with pytest.raises(PriorlabError):
        predictive_similarity(nxt * 2, prob)
    with pytest.raises(PriorlabError):
        predictive_similarity(nxt, prob[:4])


def test_alignment_is_one_for_spanning_features_zero_for_orthogonal_ones():
    w = noisy_cycle(6, 4).windows(4)
    _, functions = predictive_eigenfunctions(w.next_token, w.prob)
    mixed = functions @ torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.5],
                                      [3.0, 0.0, 1.0, -1.0]], dtype=torch.float64) + 4.0
    assert eigenfunction_alignment(mixed, functions, w.prob) == pytest.approx(1.0)
    assert eigenfunction_alignment(functions[:, :1], functions, w.prob) == pytest.approx(1 / 3)
    # a function p-orthogonal to all eigenfunctions (and to constants)
    g = torch.randn(256, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    basis = torch.cat([torch.ones(256, 1, dtype=torch.float64), functions], 1)
    coef = torch.linalg.solve(basis.T @ (w.prob[:, None] * basis), basis.T @ (w.prob[:, None] * g))
    orthogonal = g - basis @ coef
    assert eigenfunction_alignment(orthogonal, functions, w.prob) == pytest.approx(0.0, abs=1e-10)
    # top principal direction only: the large-variance column wins
    two = torch.cat([100 * orthogonal, functions[:, :1]], 1)
    assert eigenfunction_alignment(two, functions, w.prob, feature_components=1) == \
        pytest.approx(0.0, abs=1e-8)
    with pytest.raises(PriorlabError, match="trivially"):
        eigenfunction_alignment(torch.eye(256, dtype=torch.float64), functions, w.prob)
    with pytest.raises(PriorlabError):
        eigenfunction_alignment(mixed[:10], functions, w.prob)
    with pytest.raises(PriorlabError):
        eigenfunction_alignment(mixed, functions, w.prob, feature_components=9)


def test_information_surplus_exact_and_sampled():
    w = noisy_cycle(6, 4).windows(4)
    logits = w.next_token.log()
    extra = torch.cat([logits, w.token_after_next], 1)  # knows the token after next outright
    assert information_surplus(logits, logits, w.token_after_next, sample_weight=w.prob) == \
        pytest.approx(0.0, abs=1e-6)
    gain = information_surplus(extra, logits, w.token_after_next, sample_weight=w.prob)
    assert gain > 0.005
    g = torch.Generator().manual_seed(0)
    rows = torch.multinomial(w.prob, 4000, replacement=True, generator=g)
    future = torch.multinomial(w.token_after_next[rows], 1, generator=g).squeeze(1)
    sampled = information_surplus(extra[rows].float(), logits[rows].float(), future)
    assert abs(sampled - gain) < 0.03
    for bad in (lambda: information_surplus(extra, logits, w.token_after_next),  # no weights
                lambda: information_surplus(extra[rows], logits[rows], future, sample_weight=w.prob),
                lambda: information_surplus(extra[:5], logits, future),
                lambda: information_surplus(extra[rows], logits[rows], future, test_fraction=1.0)):
        with pytest.raises(PriorlabError):
            bad()


def test_reproduction_smoke_runs_both_arms():
    claim = p040_markov.CLAIM
    cfg = dict(claim.tiers["smoke"], steps=30)
    outs = {arm: p040_markov.run(arm, cfg, seed=0) for arm in claim.arms}
    for out in outs.values():
        assert {claim.metric, *claim.extra_metrics} <= set(out.metrics)
        assert all(math.isfinite(v) for v in out.metrics.values())
        assert 0 <= out.metrics["alignment"] <= 1 + 1e-9
        assert out.metrics["excess_loss"] > -1e-6
    # training moves the model: at the same seed the trained arm differs from its initialisation
    for comparison in claim.comparisons:
        method, baseline = outs[comparison.method].metrics, outs[comparison.baseline].metrics
        assert method[claim.metric] != baseline[claim.metric]
        assert method["excess_loss"] != baseline["excess_loss"]
