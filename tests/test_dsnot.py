"""Wanda / magnitude masks, layer-wise calibration and DSnoT's prune-and-grow cycles (paper 64)."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.llm import perplexity, tiny_llama
from priorlab.sparsity.dsnot import DSnoT, dsnot_mask
from priorlab.sparsity.pruning import (InputStats, magnitude_mask, prune_model, row_mask, wanda_mask,
                                       wanda_scores, weight_sparsity)


def _layer(out=6, features=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, features, generator=gen)
    # inputs with per-feature means and scales, as LLM activations have
    x = torch.randn(3, 40, features, generator=gen) * torch.rand(features, generator=gen) * 2
    x = x + torch.randn(features, generator=gen)
    stats = InputStats(features)
    stats.update(x)
    return weight, x, stats


def _official_dsnot(weight, stats, sparsity, cycles, threshold, power, keep_sign):
    """A row-by-row transcription of the unstructured branch of prune_DSnoT (zyxxmu/DSnoT
    lib/prune.py) starting from Wanda's mask: the full sorted growth list with kept weights at 0,
    the return_reorder_indice pruning order and two cursors per list."""
    n = weight.shape[1]
    n_pruned = int(n * sparsity)
    wanda = weight.abs() * stats.sq_norm.sqrt()
    contribution = weight * stats.seq_sum
    masks = []
    for i in range(weight.shape[0]):
        order = torch.sort(wanda[i], stable=True).indices.tolist()
        pruned_set, kept_list = set(order[:n_pruned]), order[n_pruned:]
        mask = [j in pruned_set for j in range(n)]
        c = contribution[i].tolist()
        error = sum(c[j] for j in pruned_set)
        sign0 = math.copysign(1, error) if error else 0
        grow_metric = [c[j] / stats.var[j].item() ** power if mask[j] else 0.0 for j in range(n)]
        grow_list = torch.sort(torch.tensor(grow_metric), stable=True).indices.tolist()
        negatives = [j for j in kept_list if c[j] < 0]
        positives = [j for j in kept_list if c[j] > 0]
        prune_list = negatives + positives[::-1]
        g = [0, n - 1]
        p = [0, len(prune_list) - 1]
        active = True
        for _ in range(cycles):
            if not active:
                break
            gi = int(error > 0)
            grow = grow_list[g[gi]]
            g[gi] += 1 if gi == 0 else -1
            pi = int(error < 0)
            prune = prune_list[p[pi]]
            p[pi] += 1 if pi == 0 else -1
            after = error + c[prune] - c[grow]
            active = active and abs(error) > threshold
            if keep_sign:
                active = active and (math.copysign(1, after) if after else 0) == sign0
            if active:
                mask[prune], mask[grow] = True, False
                error = after
        masks.append(mask)
    return torch.tensor(masks)


@pytest.mark.parametrize("keep_sign", [False, True])
@pytest.mark.parametrize("power", [0.0, 1.0])
def test_dsnot_matches_a_transcription_of_the_official_cycles(keep_sign, power):
    weight, _, stats = _layer(seed=1)
    initial = wanda_mask(weight, stats.sq_norm, 0.5)
    refined = dsnot_mask(weight, initial, stats, max_cycles=8, update_threshold=0.05,
                         variance_power=power, keep_error_sign=keep_sign)
    expected = _official_dsnot(weight, stats, 0.5, 8, 0.05, power, keep_sign)
    assert torch.equal(refined, expected)
    assert not torch.equal(refined, initial)


def test_dsnot_keeps_row_sparsity_and_with_the_sign_rule_only_shrinks_the_error():
    weight, _, stats = _layer(out=12, features=128, seed=2)
    initial = wanda_mask(weight, stats.sq_norm, 0.6)
    contribution = weight * stats.seq_sum
    before = (contribution * initial).sum(1)
    for keep_sign in (False, True):
        refined = dsnot_mask(weight, initial, stats, keep_error_sign=keep_sign)
        assert torch.equal(refined.sum(1), initial.sum(1))
        assert not torch.equal(refined, initial)
    # with keep_error_sign every swap moves the error towards zero without crossing it
    after = (contribution * refined).sum(1)
    assert bool((after.abs() <= before.abs()).all()) and bool((after * before >= 0).all())
    assert after.abs().sum() < before.abs().sum()
    # more cycles than columns: rows stop when their candidates run out
    small = dsnot_mask(weight[:, :6], initial[:, :6], _layer(out=12, features=6, seed=2)[2],
                       update_threshold=0.0, keep_error_sign=False)
    assert torch.equal(small.sum(1), initial[:, :6].sum(1))
    # zero cycles, or a threshold above every error, leave the mask alone
    assert torch.equal(dsnot_mask(weight, initial, stats, max_cycles=0), initial)
    assert torch.equal(dsnot_mask(weight, initial, stats, update_threshold=1e9), initial)


def test_input_stats_match_their_definitions():
    _, x, stats = _layer(features=5, seed=3)
    assert stats.n_sequences == 3 and stats.n_tokens == 120
    torch.testing.assert_close(stats.sq_norm, x.square().sum((0, 1)) / 3)
    torch.testing.assert_close(stats.seq_sum, x.sum((0, 1)) / 3)
    torch.testing.assert_close(stats.mean, x.mean((0, 1)))
    torch.testing.assert_close(stats.var, x.var(1, unbiased=False).mean(0))
    one_by_one = InputStats(5)
    for sequence in x:
        one_by_one.update(sequence)
    torch.testing.assert_close(one_by_one.var, stats.var)


def test_wanda_and_magnitude_masks_rank_within_rows():
    weight = torch.tensor([[1.0, -4.0, 2.0, 3.0], [0.5, 0.1, -0.2, 9.0]])
    assert magnitude_mask(weight, 0.5).tolist() == [[True, False, True, False], [False, True, True, False]]
    # the input norm reorders columns: column 3's input is silent
    sq_norm = torch.tensor([1.0, 1.0, 100.0, 0.0])
    assert torch.allclose(wanda_scores(weight, sq_norm), weight.abs() * sq_norm.sqrt())
    expected = [[True, False, False, True], [False, True, False, True]]
    assert wanda_mask(weight, sq_norm, 0.5).tolist() == expected
    assert row_mask(torch.zeros(2, 5), 0.0).sum() == 0
    assert row_mask(torch.ones(2, 5), 0.6).sum(1).tolist() == [3, 3]  # ties: lower column first
    assert row_mask(torch.ones(1, 5), 0.6).tolist() == [[True, True, True, False, False]]


def test_prune_model_is_layerwise_sequential_and_dsnot_changes_the_mask():
    ids = torch.randint(256, (4, 32), generator=torch.Generator().manual_seed(0))
    dense = tiny_llama(seed=0)
    sparse = {}
    for name, method, refine in (("magnitude", "magnitude", None), ("wanda", "wanda", None),
                                 ("dsnot", "wanda", DSnoT(skip=()))):
        model = tiny_llama(seed=0)
        fractions = prune_model(model, ids, 0.5, method, refine=refine)
        assert set(fractions.values()) == {0.5}
        assert weight_sparsity(model) == pytest.approx(0.5)
        assert torch.equal(model.lm_head.weight, dense.lm_head.weight)  # embeddings stay dense
        same = [(p == q) | (p == 0) for p, q in zip(model.parameters(), dense.parameters())]
        assert all(bool(s.all()) for s in same)  # weights are only zeroed, never changed
        sparse[name] = model
        if refine is not None:
            assert sum(refine.regrown.values()) > 0
    weights = {k: m.model.layers[1].self_attn.q_proj.weight for k, m in sparse.items()}
    assert not torch.equal(weights["wanda"] != 0, weights["magnitude"] != 0)
    assert not torch.equal(weights["dsnot"] != 0, weights["wanda"] != 0)
    # the second layer's statistics come from inputs computed with the first layer pruned
    model = tiny_llama(seed=0)
    seen = []
    prune_model(model, ids, 0.5, "wanda", refine=lambda n, w, m, s: seen.append((n, s.sq_norm)) or m)
    first_dense = tiny_llama(seed=0)
    prune_model(first_dense, ids, 0.0, "wanda",
                refine=lambda n, w, m, s: seen.append((n, s.sq_norm)) or m)
    half = len(seen) // 2
    assert torch.equal(seen[0][1], seen[half][1])  # layer 0 sees the same inputs either way
    layer1 = [i for i, (n, _) in enumerate(seen[:half]) if n.startswith("model.layers.1.")][0]
    assert not torch.allclose(seen[layer1][1], seen[half + layer1][1])
    assert math.isfinite(perplexity(sparse["dsnot"], ids.flatten(), 32))


def test_bad_input_raises_clear_errors():
    weight, _, stats = _layer()
    mask = magnitude_mask(weight, 0.5)
    model = tiny_llama(seed=0)
    ids = torch.randint(256, (2, 8))
    with pytest.raises(PriorlabError, match="did you mean 'wanda'"):
        prune_model(model, ids, 0.5, "wandaa")
    with pytest.raises(PriorlabError, match="sparsity"):
        prune_model(model, ids, 1.0)
    with pytest.raises(PriorlabError, match="calibration_ids"):
        prune_model(model, None, 0.5, "wanda")
    with pytest.raises(PriorlabError, match="sequences, tokens"):
        prune_model(model, ids.flatten(), 0.5)
    with pytest.raises(PriorlabError, match="decoder layers"):
        prune_model(torch.nn.Linear(3, 3), None, 0.5, "magnitude")
    with pytest.raises(PriorlabError, match="mask"):
        dsnot_mask(weight, mask.float(), stats)
    with pytest.raises(PriorlabError, match="InputStats"):
        dsnot_mask(weight, mask, InputStats(3))
    with pytest.raises(PriorlabError, match="max_cycles"):
        DSnoT(max_cycles=-1)
    with pytest.raises(PriorlabError, match="skip"):
        DSnoT(skip="mlp")
    with pytest.raises(PriorlabError, match="NaN"):
        magnitude_mask(torch.full((2, 2), math.nan), 0.5)
    with pytest.raises(PriorlabError, match="input_sq_norm"):
        wanda_mask(weight, -torch.ones(64), 0.5)
    with pytest.raises(PriorlabError, match="no calibration inputs"):
        InputStats(4).var
    with pytest.raises(PriorlabError, match="features"):
        InputStats(4).update(torch.ones(2, 3))


def test_reproduction_arms_differ_and_seeds_pick_different_calibration_blocks():
    from priorlab.reproductions import p064_dsnot as repro

    cfg = repro.CLAIM.tiers["smoke"]
    wanda = repro.run("wanda_70", cfg, 0)
    dsnot = repro.run("wanda_dsnot_70", cfg, 0)
    assert dsnot.metrics["regrown_fraction"] > 0 and dsnot.metrics["error_reduction"] > 0
    assert dsnot.metrics["perplexity"] != wanda.metrics["perplexity"]
    assert wanda.metrics["sparsity"] == pytest.approx(0.7, abs=0.02)  # int(row * 0.7) per row
    tokens = torch.arange(100)
    a, b = (repro.calibration_blocks(tokens, 10, 3, seed) for seed in (0, 1))
    assert a.shape == (3, 10) and not torch.equal(a, b)
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(3, 9, dtype=torch.long))  # contiguous blocks
    with pytest.raises(PriorlabError, match="did you mean"):
        repro.run("wanda_dsnot70", cfg, 0)


def test_dsnot_rejects_an_empty_layer_and_non_finite_calibration():
    # fuzz findings: an empty weight gave DSnoT.error = (nan, nan); NaN calibration inputs gave a
    # mask computed from NaN errors
    stats = InputStats(4)
    stats.update(torch.randn(5, 4))
    with pytest.raises(PriorlabError, match="weight is empty"):
        DSnoT()("q_proj", torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.bool), stats)
    bad = InputStats(4)
    bad.update(torch.tensor([[float("nan"), 0.0, 1.0, 2.0]] * 3))
    weight = torch.randn(2, 4)
    with pytest.raises(PriorlabError, match="stats.seq_sum"):
        dsnot_mask(weight, magnitude_mask(weight, 0.5), bad)


def test_dsnot_rejects_contributions_that_overflow():
    # fuzz finding: a weight near float32's maximum overflowed the reconstruction error, which
    # made DSnoT.error NaN and the swaps arbitrary
    stats = InputStats(4)
    stats.update(torch.full((3, 4), 2.0))
    weight = torch.tensor([[3e38, 0.1, 0.2, 0.3]])
    with pytest.raises(PriorlabError, match="overflows"):
        dsnot_mask(weight, magnitude_mask(weight, 0.5), stats)
