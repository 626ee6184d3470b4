"""Sparse then Prune (paper 55): attention penalty, global magnitude pruning, AttentionViT."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.attention_sparsity import (attention_log_penalty, attention_sparsity_loss,
                                                    global_magnitude_masks, global_magnitude_prune,
                                                    prunable_weights, sparse_regularised_loss)
from priorlab.nn.attention_vit import AttentionViT
from priorlab.reproductions import p055_sparse_vit as repro


def _vit(**kwargs) -> AttentionViT:
    torch.manual_seed(0)
    return AttentionViT(3, **{"image_size": 4, "patch_size": 2, "dim": 8, "depth": 2, "heads": 2,
                              "mlp_dim": 16, **kwargs})


def test_penalty_known_values():
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert attention_log_penalty(one_hot).item() == pytest.approx(math.log(2) / 2)
    uniform = torch.full((3, 4), 0.25)
    assert attention_log_penalty(uniform).item() == pytest.approx(math.log(1 + 1 / 16))


def test_penalty_is_smallest_for_uniform_rows():
    # log(1 + a^2) is convex on [0, 1]: on softmax rows the penalty prefers spread-out attention
    torch.manual_seed(0)
    rows = torch.softmax(3 * torch.randn(100, 5), dim=-1)
    assert bool((torch.log1p(rows.square()).mean(-1) >= math.log(1 + 1 / 25) - 1e-7).all())


def test_blocks_last_and_all():
    a, b = torch.full((1, 1, 2, 2), 0.5), torch.eye(2).view(1, 1, 2, 2)
    assert attention_sparsity_loss([a, b]).item() == pytest.approx(attention_log_penalty(b).item())
    both = (attention_log_penalty(a) + attention_log_penalty(b)) / 2
    assert attention_sparsity_loss([a, b], blocks="all").item() == pytest.approx(both.item())


def test_zero_strength_is_cross_entropy_and_gradients_finite():
    model = _vit()
    x, y = torch.rand(5, 1, 4, 4), torch.randint(0, 3, (5,))
    logits, attentions = model(x, return_attention=True)
    plain = nn.functional.cross_entropy(logits, y)
    assert sparse_regularised_loss(logits, y, attentions, strength=0.0).item() == plain.item()
    loss = sparse_regularised_loss(logits, y, attentions, strength=0.01)
    assert loss.item() == pytest.approx(plain.item() + 0.01 * attention_log_penalty(attentions[-1]).item())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_vit_shapes_and_attention_rows():
    model = _vit()
    logits, attentions = model(torch.rand(2, 1, 4, 4), return_attention=True)
    assert logits.shape == (2, 3) and len(attentions) == 2
    assert attentions[0].shape == (2, 2, 5, 5)  # 1 + (4 / 2)^2 tokens
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, 2, 5))
    torch.testing.assert_close(model(torch.rand(2, 1, 4, 4)).shape, torch.Size([2, 3]))


def test_vit_state_dict_round_trip():
    model, other = _vit(), _vit()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(model(x), other(x))


def test_global_masks_pool_across_tensors():
    a, b = torch.tensor([[0.1, -5.0]]), torch.tensor([0.2, 0.3, -0.05])
    masks = global_magnitude_masks([a, b], 0.6)  # round(0.6 * 5) = 3 smallest: 0.05, 0.1, 0.2
    assert masks[0].tolist() == [[True, False]] and masks[1].tolist() == [True, False, True]
    assert not any(m.any() for m in global_magnitude_masks([a, b], 0.0))


def test_prune_zeroes_only_module_weights():
    model = _vit()
    biases = {n: p.clone() for n, p in model.named_parameters() if not n.endswith("weight")}
    zeroed = global_magnitude_prune(model, 0.5)
    weights = prunable_weights(model)
    n = sum(w.numel() for w in weights)
    assert zeroed == pytest.approx(round(0.5 * n) / n)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * n)
    for name, p in model.named_parameters():
        if name in biases:
            assert torch.equal(p, biases[name])
    assert len(weights) == 1 + 2 * 8 + 1 + 1  # patch embedding, per block 2 LN + 4 attn + 2 MLP


@pytest.mark.parametrize("bad", [
    lambda: attention_log_penalty(torch.full((2, 2), 1.5)),
    lambda: attention_log_penalty(torch.tensor([1.0, 0.0])),
    lambda: attention_log_penalty(torch.tensor([[float("nan"), 0.5]])),
    lambda: attention_sparsity_loss([torch.eye(2)], blocks="first"),
    lambda: attention_sparsity_loss(torch.eye(2)),
    lambda: sparse_regularised_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), [torch.eye(2)],
                                    strength=float("nan")),
    lambda: global_magnitude_masks([torch.ones(2)], -0.1),
    lambda: global_magnitude_masks([], 0.5),
    lambda: global_magnitude_prune(nn.Sequential(nn.ReLU()), 0.5),
    lambda: AttentionViT(10, image_size=28, patch_size=5),
    lambda: AttentionViT(10, dim=30, heads=4),
    lambda: _vit()(torch.rand(2, 3, 4, 4)),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_reproduction_arms_differ_only_in_the_penalty():
    cfg = dict(repro.CLAIM.tiers["smoke"], epochs=3, strength=1.0)
    base = repro.run("baseline_50", cfg, seed=0)
    sparse = repro.run("sparse_50", cfg, seed=0)
    assert base.info["penalty_weight"] == 0.0 and sparse.info["penalty_weight"] == 1.0
    assert base.metrics["attention_penalty"] != sparse.metrics["attention_penalty"]
    assert base.metrics["acc_drop"] == pytest.approx(base.metrics["dense_acc"] - base.metrics["pruned_acc"])
    with pytest.raises(PriorlabError):
        repro.run("sparse_55", cfg, seed=0)
