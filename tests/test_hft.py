"""HFT, half fine-tuning (paper 53): the draw, the freezing, presets, errors, the reproduction."""

import pytest
import torch
import torch.nn.functional as F

from priorlab.continual.half_tuning import (
    LAYOUTS,
    HalfLayout,
    apply_half,
    draw_half,
    half_fine_tune,
    unfreeze_all,
)
from priorlab.errors import PriorlabError
from priorlab.nn.attention_vit import AttentionViT


def _vit(depth=3, seed=0):
    torch.manual_seed(seed)
    return AttentionViT(4, image_size=8, patch_size=4, dim=8, depth=depth, heads=2, mlp_dim=16)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_vit_half_per_block_and_category():
    selection = draw_half(_vit(), "attention_vit", generator=_gen())
    assert len(selection.trained) == len(selection.frozen) == 3 * 3  # 2 attn + 1 mlp per block
    assert not set(selection.trained) & set(selection.frozen)
    for b in range(3):
        trained = [p for p in selection.trained if p.startswith(f"blocks.{b}.")]
        assert sum(".attn." in p for p in trained) == 2
        assert sum(".mlp." in p for p in trained) == 1


def test_draw_is_seeded_and_redrawn_per_stage():
    model = _vit()
    assert draw_half(model, generator=_gen(3)) == draw_half(model, generator=_gen(3))
    g = _gen(3)
    stages = {draw_half(model, generator=g).trained for _ in range(6)}
    assert len(stages) > 1  # a fresh half each stage


def test_frozen_half_does_not_move_and_the_rest_does():
    model = _vit()
    selection = half_fine_tune(model, generator=_gen(1))
    frozen_before = {k: v.detach().clone() for k, v in selection.frozen_parameters(model).items()}
    trained_before = {f"{p}.weight": model.get_submodule(p).weight.detach().clone()
                      for p in selection.trained}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # all params: frozen ones get no grad
    x, y = torch.rand(16, 1, 8, 8, generator=_gen()), torch.randint(0, 4, (16,), generator=_gen())
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    for name, before in frozen_before.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    for name, before in trained_before.items():
        assert not torch.equal(dict(model.named_parameters())[name], before), name
    assert model.classifier.weight.requires_grad and model.patch_embed.weight.requires_grad


def test_next_stage_unfreezes_the_previous_half_and_unfreeze_all():
    model = _vit()
    g = _gen(2)
    half_fine_tune(model, generator=g)
    second = half_fine_tune(model, generator=g)
    for path in second.trained:
        assert all(p.requires_grad for p in model.get_submodule(path).parameters())
    assert sum(not p.requires_grad for p in model.parameters()) == 2 * len(second.frozen)
    unfreeze_all(model)
    assert all(p.requires_grad for p in model.parameters())


def test_pooled_control_freezes_as_many_but_not_per_block():
    model = _vit(depth=4)
    counts = set()
    for seed in range(8):
        pooled = draw_half(model, generator=_gen(seed), stratified=False)
        assert len(pooled.trained) == 12 and len(pooled.frozen) == 12
        counts.add(tuple(sum(p.startswith(f"blocks.{b}.") for p in pooled.trained) for b in range(4)))
    assert any(c != (3, 3, 3, 3) for c in counts)


def test_llama_preset_on_tiny_llama():
    from priorlab.llm import tiny_llama

    model = tiny_llama(layers=2, seed=0)
    selection = half_fine_tune(model, "llama", generator=_gen())
    for b in range(2):
        trained = [p for p in selection.trained if p.startswith(f"model.layers.{b}.")]
        assert sum(".self_attn." in p for p in trained) == 2
        assert sum(".mlp." in p for p in trained) in (1, 2)  # 3 MLP matrices: 1 or 2 train
    ids = torch.randint(0, 256, (2, 8), generator=_gen())
    before = {k: v.detach().clone() for k, v in selection.frozen_parameters(model).items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    assert all(torch.equal(dict(model.named_parameters())[k], v) for k, v in before.items())


def test_custom_layout_and_errors():
    model = _vit(depth=1)
    custom = HalfLayout(blocks="blocks", categories=(("attn.query", "attn.key"),))
    assert len(draw_half(model, custom, generator=_gen()).trained) == 1
    with pytest.raises(PriorlabError, match="did you mean 'llama'"):
        draw_half(model, "lama")
    with pytest.raises(PriorlabError, match="no submodule 'model.layers'"):
        draw_half(model, "llama")
    with pytest.raises(PriorlabError, match="attn.querry"):
        draw_half(model, HalfLayout("blocks", (("attn.querry", "attn.key"),)))
    with pytest.raises(PriorlabError, match="at least two"):
        draw_half(model, HalfLayout("blocks", (("attn.query",),)))
    with pytest.raises(PriorlabError, match="ModuleList"):
        draw_half(model, HalfLayout("classifier", LAYOUTS["attention_vit"].categories))


def test_apply_half_clears_stale_gradients():
    model = _vit(depth=1)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    selection = apply_half(model, draw_half(model, generator=_gen()))
    assert all(p.grad is None for p in selection.frozen_parameters(model).values())


def test_reproduction_arms_differ_on_smoke():
    from priorlab.reproductions import p053_hft

    cfg = dict(p053_hft.CLAIM.tiers["smoke"])
    fft = p053_hft.run("fft", cfg, 0)
    hft = p053_hft.run("hft", cfg, 0)
    assert fft.metrics["frozen_fraction"] == 0.0 and 0.1 < hft.metrics["frozen_fraction"] < 0.6
    assert fft.info["R_test"] != hft.info["R_test"]
    with pytest.raises(PriorlabError, match="did you mean 'hft'"):
        p053_hft.run("hf", cfg, 0)
