"""OVOR (paper 8): prompts on a frozen ViT, virtual outliers, the energy-margin loss."""

import pytest
import torch
import torch.nn.functional as F

from priorlab.continual.prompts import (
    PromptedViT,
    PromptPool,
    SinglePrompt,
    energy,
    energy_margin_loss,
    prompted_features,
    synthesize_outliers,
)
from priorlab.errors import PriorlabError
from priorlab.nn.attention_vit import AttentionViT


def _vit(depth=2, seed=0):
    torch.manual_seed(seed)
    return AttentionViT(4, image_size=8, patch_size=4, dim=8, depth=depth, heads=2, mlp_dim=16)


def _x(n=6, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_no_prefix_matches_the_plain_vit():
    vit, x = _vit(), _x()
    with torch.no_grad():
        ours = vit.classifier(prompted_features(vit, x))
        torch.testing.assert_close(ours, vit(x))


def test_zero_value_prefix_with_very_negative_keys_is_identity():
    # attention to a prefix whose keys score -inf-like and whose values are 0 changes nothing
    vit, x = _vit(), _x()
    vit.blocks[0].attn.query.weight.data.zero_()
    vit.blocks[0].attn.query.bias.data.fill_(1.0)
    prefix = torch.zeros(1, 2, 3, 8)
    prefix[:, 0] = -1e4
    with torch.no_grad():
        torch.testing.assert_close(prompted_features(vit, x, {0: prefix}), prompted_features(vit, x))


def test_single_prompt_changes_features_and_only_prompt_and_head_train():
    vit, x = _vit(), _x()
    model = PromptedViT(vit, SinglePrompt(8, 2, (0, 1)), 4)
    frozen = {k: v.clone() for k, v in vit.state_dict().items()}
    with torch.no_grad():
        assert not torch.allclose(model.features(x)[0], prompted_features(vit, x))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt.prompt", "head.weight", "head.bias"]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    opt.step()
    for k, v in vit.state_dict().items():
        torch.testing.assert_close(v, frozen[k])
    assert model.prompt_parameters() == 2 * 2 * 2 * 8 and model.prompt.forward_passes == 1


def test_state_dict_round_trip():
    model = PromptedViT(_vit(), SinglePrompt(8, 2, (1,)), 4)
    other = PromptedViT(_vit(seed=1), SinglePrompt(8, 2, (1,)), 4)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(_x()), model(_x()))


def test_pool_selects_nearest_keys_and_loss_known_value():
    pool = PromptPool(4, pool_size=3, length=1, top_k=1, layers=(0,))
    with torch.no_grad():
        pool.keys.copy_(torch.eye(3, 4))
    query = torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    prefixes, match = pool(query)
    # query 0 picks key 1 (cos 1); query 1 ties keys 0 and 1 at cos 1/sqrt(2)
    torch.testing.assert_close(prefixes[0][0], pool.prompts[1, 0])
    assert float(match.detach()) == pytest.approx((0.0 + (1 - 2 ** -0.5)) / 2, abs=1e-6)
    assert pool.forward_passes == 2


def test_pool_prefix_length_and_gradients_reach_keys():
    vit, x = _vit(), _x()
    model = PromptedViT(vit, PromptPool(8, pool_size=5, length=2, top_k=3, layers=(0,)), 4)
    features, match = model.features(x)
    assert features.shape == (6, 8)
    prefixes, _ = model.prompt(torch.randn(6, 8))
    assert prefixes[0].shape == (6, 2, 6, 8)
    (model.head(features).sum() + match).backward()
    assert model.prompt.keys.grad.abs().sum() > 0 and model.prompt.prompts.grad.abs().sum() > 0


def test_outliers_lie_outside_the_data():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(300, 4, generator=g) + torch.tensor([5.0, 0, 0, 0])
    oods = synthesize_outliers(feats, 50, k=10, n_boundary=20, samples_per_point=30, sigma=0.5,
                               generator=torch.Generator().manual_seed(1))
    assert oods.shape == (50, 4) and not oods.requires_grad
    normed, onormed = F.normalize(feats, dim=1), F.normalize(oods, dim=1)
    kth = lambda p: torch.cdist(p, normed).kthvalue(10, dim=1).values  # noqa: E731
    assert kth(onormed).mean() > kth(normed).mean()
    again = synthesize_outliers(feats, 50, k=10, n_boundary=20, samples_per_point=30, sigma=0.5,
                                generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(oods, again)


def test_energy_margin_loss_known_values():
    # E = -logsumexp; two classes with logits (a, a): E = -(a + log 2)
    id_logits = torch.full((3, 2), 20.0)  # E ~ -20.7 < -15: no ID penalty
    ood_logits = torch.full((4, 2), -10.0)  # E ~ 9.3 > -3: no outlier penalty
    assert float(energy_margin_loss(id_logits, ood_logits)) == 0.0
    torch.testing.assert_close(energy(torch.zeros(1, 2)), -torch.log(torch.tensor([2.0])))
    # ID energy -14.5 - log2... pick logits so E_id = -14.5 (gap 0.5, Huber 0.125)
    a = 14.5 - float(torch.log(torch.tensor(2.0)))
    id_logits = torch.full((2, 2), a)
    loss = energy_margin_loss(id_logits, ood_logits, weight=1.0)
    assert float(loss) == pytest.approx(0.125, rel=1e-5)
    # outlier energy -6 (gap 3 above Huber's delta 1: 3 - 0.5 = 2.5), weight 0.1
    ood = torch.full((1, 2), 6.0 - float(torch.log(torch.tensor(2.0))))
    loss = energy_margin_loss(torch.full((1, 2), 20.0), ood)
    assert float(loss) == pytest.approx(0.25, rel=1e-5)
    assert float(energy_margin_loss(id_logits, ood, weight=0.0)) == 0.0


def test_energy_loss_gradients_push_energies_apart():
    id_logits = torch.zeros(3, 2, requires_grad=True)
    ood_logits = torch.zeros(3, 2, requires_grad=True)
    energy_margin_loss(id_logits, ood_logits).backward()
    assert (id_logits.grad < 0).all()  # raising ID logits lowers the loss (lower ID energy)
    assert ood_logits.grad.abs().sum() == 0  # E_ood = -log 2 > -3: no outlier penalty


@pytest.mark.parametrize("bad", [
    lambda: SinglePrompt(8, 0, (0,)),
    lambda: SinglePrompt(8, 2, (0, 0)),
    lambda: PromptPool(8, 3, 2, 4, (0,)),
    lambda: PromptPool(8, 3, 2, 1, (0,))(torch.zeros(2, 5)),
    lambda: PromptedViT(_vit(depth=1), SinglePrompt(8, 2, (1,)), 4),
    lambda: PromptedViT(_vit(), torch.nn.Linear(2, 2), 4),
    lambda: PromptedViT(torch.nn.Linear(2, 2), SinglePrompt(8, 2, (0,)), 4),
    lambda: prompted_features(_vit(), _x(), {5: torch.zeros(1, 2, 2, 8)}),
    lambda: prompted_features(_vit(), _x(), {0: torch.zeros(1, 2, 2, 7)}),
    lambda: prompted_features(_vit(), _x(), {0: torch.zeros(3, 2, 2, 8)}),
    lambda: synthesize_outliers(torch.randn(10, 4), 5, k=11),
    lambda: synthesize_outliers(torch.randn(10, 4), 500, k=2, n_boundary=2, samples_per_point=3),
    lambda: synthesize_outliers(torch.randn(10, 4), 5, k=2, sigma=0.0),
    lambda: synthesize_outliers(torch.full((10, 4), float("nan")), 5, k=2),
    lambda: energy_margin_loss(torch.zeros(2, 3), torch.zeros(2, 2)),
    lambda: energy_margin_loss(torch.zeros(2, 3), torch.zeros(2, 3), weight=float("nan")),
    lambda: energy_margin_loss(torch.zeros(2, 3), torch.zeros(2, 3), id_margin=1.0),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_reproduction_arms_differ_on_smoke():
    from priorlab.harness.claim import RunOutput
    from priorlab.reproductions import p008_ovor as repro
    cfg = repro.CLAIM.tiers["smoke"]
    one = repro.run("one_prompt", cfg, 0)
    ovor = repro.run("ovor", cfg, 0)
    pool = repro.run("l2p", cfg, 0)
    assert isinstance(ovor, RunOutput)
    assert ovor.metrics["inference_passes"] == 1.0 and pool.metrics["inference_passes"] == 2.0
    assert ovor.metrics["prompt_params_vs_pool"] < 1.0 == pool.metrics["prompt_params_vs_pool"]
    assert ovor.info["R_test"] != one.info["R_test"]  # the outlier epochs change the head
    with pytest.raises(PriorlabError):
        repro.run("ovr", cfg, 0)
