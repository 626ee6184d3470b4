"""R-AMT (seed 19): binary-mask parametrisation, score penalty, KL to zero-shot, gradient dropout."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.nn.mask_tuning import (
    apply_masks,
    binarize,
    distillation_kl,
    gradient_dropout,
    gradient_dropout_backward,
    mask_penalty,
    mask_scores,
    mask_sparsity,
)
from priorlab.vl.standin import PromptableViT, tiny_clip


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def test_binarize_thresholds_forward_and_passes_gradient_straight_through():
    scores = torch.tensor([0.0, 0.004, 0.005, 0.006, 0.02], requires_grad=True)
    mask = binarize(scores, 5e-3)
    assert mask.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # strictly above the threshold, as officially
    (mask * torch.arange(5.0)).sum().backward()
    assert scores.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_masked_model_starts_identical_and_only_scores_train():
    reference, model = _mlp(), _mlp()
    names = apply_masks(model, ["0", "2"])
    assert names == ["0", "2"]
    x = torch.randn(4, 5)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["0.parametrizations.weight.0.scores", "2.parametrizations.weight.0.scores"]
    assert mask_sparsity(model) == 0.0
    # switching scores off zeroes exactly those weights; the stored weights stay untouched
    with torch.no_grad():
        model[0].parametrizations.weight[0].scores[:, 0] = 0.0
    assert torch.equal(model[0].weight[:, 0], torch.zeros(7))
    assert torch.equal(model[0].parametrizations.weight.original, reference[0].weight)
    assert mask_sparsity(model) == pytest.approx(7 / (35 + 21))


def test_training_moves_scores_but_never_weights_and_state_dict_round_trips():
    model = _mlp()
    apply_masks(model, ["0", "2"])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.Adam(mask_scores(model), lr=3e-3)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    for _ in range(5):
        loss = F.cross_entropy(model(x), y) + 1e-4 * mask_penalty(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert mask_sparsity(model) > 0
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name])
    copy = _mlp()
    apply_masks(copy, ["0", "2"])
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)


def test_presets_match_the_official_layers_on_clip_and_the_standin():
    names = apply_masks(tiny_clip(), "clip_vision")
    assert sorted(names) == sorted(["vision_model.embeddings.patch_embedding"] + [
        f"vision_model.encoder.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkv"] + [
        f"vision_model.encoder.layers.{i}.self_attn.out_proj" for i in range(2)])
    vit = PromptableViT(16, dim=16, depth=2, heads=2, mlp_dim=32)
    assert len(apply_masks(vit, "standin_vit")) == 1 + 2 * 4  # no MLP layers
    assert all(".mlp." not in n for n, p in vit.named_parameters() if p.requires_grad)


def test_mask_penalty_is_the_sum_of_l2_norms_of_the_scores():
    model = _mlp()
    apply_masks(model, ["0", "2"], init=0.02, threshold=0.01)
    assert mask_penalty(model).item() == pytest.approx(0.02 * (math.sqrt(35) + math.sqrt(21)), rel=1e-6)


def test_distillation_kl_known_value_zero_at_teacher_and_temperature_scaling():
    logits = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0]])
    p = torch.softmax(logits, -1)
    expected = (0.5 * (math.log(0.5) - p.log())).sum().item()
    assert distillation_kl(logits, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert distillation_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    t = 2.0
    expected_t = t * t * (0.5 * (math.log(0.5) - torch.softmax(logits / t, -1).log())).sum().item()
    assert distillation_kl(logits, teacher, t).item() == pytest.approx(expected_t, rel=1e-6)


def test_gradient_dropout_keeps_agreeing_elements_and_drops_by_the_paper_probability():
    g = torch.tensor([1.0, -2.0, 1.0, 1.0])
    ref = torch.tensor([3.0, -1.0, -1e6, 0.0])  # agree, agree, overwhelming conflict, no reference
    out = gradient_dropout(g, ref, generator=torch.Generator().manual_seed(0))
    assert out[[0, 1, 3]].tolist() == [1.0, -2.0, 1.0]
    assert out[2].item() == 0.0
    # conflicting element with |g| = 1, |g_ref| = 3: kept with probability 1/4
    n = 20000
    kept = gradient_dropout(torch.ones(n), torch.full((n,), -3.0),
                            generator=torch.Generator().manual_seed(1))
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert kept.mean().item() == pytest.approx(0.25, abs=0.015)
    # strength 0 is the identity; strength 0.5 halves the dropped elements
    assert torch.equal(gradient_dropout(g, ref, 0.0), g)
    half = gradient_dropout(torch.ones(4), torch.full((4,), -1e9), 0.5)
    assert half.tolist() == [0.5] * 4


def test_gradient_dropout_backward_sets_thinned_task_gradients():
    model = _mlp()
    apply_masks(model, ["0", "2"])
    scores = mask_scores(model)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    logits = model(x)
    task = F.cross_entropy(logits, y)
    kl = distillation_kl(logits, torch.randn(16, 3))
    plain = torch.autograd.grad(task, scores, retain_graph=True)
    gradient_dropout_backward(task, kl, scores, generator=torch.Generator().manual_seed(0))
    for p, g in zip(scores, plain):
        assert torch.isfinite(p.grad).all()
        kept = p.grad != 0
        torch.testing.assert_close(p.grad[kept], g[kept])  # kept elements unchanged, others zero
    assert sum(int((p.grad == 0).sum() - (g == 0).sum()) for p, g in zip(scores, plain)) > 0


@pytest.mark.parametrize("bad", [
    lambda: apply_masks(_mlp(), "clip_visoin"),
    lambda: apply_masks(_mlp(), ["9"]),
    lambda: apply_masks(_mlp(), []),
    lambda: apply_masks(_mlp(), ["0"], init=1e-3, threshold=5e-3),
    lambda: apply_masks(_mlp(), ["0"], threshold=-1.0),
    lambda: apply_masks("not a model"),
    lambda: mask_penalty(_mlp()),
    lambda: binarize(torch.tensor([math.nan]), 0.0),
    lambda: gradient_dropout(torch.ones(2), torch.ones(3)),
    lambda: gradient_dropout(torch.ones(2), torch.ones(2), strength=-0.1),
    lambda: distillation_kl(torch.zeros(2, 3), torch.zeros(2, 4)),
    lambda: distillation_kl(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0),
    lambda: gradient_dropout_backward(torch.zeros(()), torch.zeros(()), []),
])
def test_bad_input_raises_a_clear_error(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_masks_applied_twice_are_refused_and_a_second_call_keeps_earlier_scores_trainable():
    model = _mlp()
    apply_masks(model, ["0"])
    with pytest.raises(PriorlabError, match="already"):
        apply_masks(model, ["0"])
    apply_masks(model, ["2"])
    assert len(mask_scores(model)) == 2 and all(p.requires_grad for p in mask_scores(model))


def test_reproduction_rejects_an_unknown_arm():
    # that the ramt arm differs from the mask arm is checked by tests/repro_smoke (smoke tier)
    from priorlab.reproductions.p019_ramt import CLAIM, run
    with pytest.raises(PriorlabError, match="mask"):
        run("rmat", CLAIM.tiers["smoke"], 0)
