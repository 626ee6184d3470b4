"""GLAD (seed 18): LoRA via PEFT, gradient regularised towards the SAM gradient."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.optim.glad import GLAD, apply_lora, regularise_gradients
from priorlab.train import fit
from priorlab.vl.standin import PromptableViT, tiny_clip


def _quadratic():
    """L(w) = 0.5 * sum(a * w^2): gradient a * w, known in closed form."""
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    a = torch.tensor([1.0, 3.0])
    return w, a, lambda: 0.5 * (a * w * w).sum()


def test_known_value_on_a_quadratic():
    w, a, loss = _quadratic()
    loss().backward()
    g = (a * w).detach()  # (1, 6)
    cosine = regularise_gradients([w], loss, rho=0.5, strength=0.5)
    shifted = w.detach() + 0.5 * g / g.norm()
    g_sam = a * shifted
    assert torch.allclose(w.grad, g + 0.5 * (g_sam - g))
    assert cosine == pytest.approx(float(F.cosine_similarity(g, g_sam, dim=0)), abs=1e-6)
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))  # weights restored exactly


@pytest.mark.parametrize("kwargs", [{"strength": 0.0}, {"rho": 0.0}])
def test_zero_strength_or_radius_leaves_the_gradient_alone(kwargs):
    w, _, loss = _quadratic()
    loss().backward()
    before = w.grad.clone()
    assert regularise_gradients([w], loss, **kwargs) == 1.0
    assert torch.equal(w.grad, before)


def test_strength_one_is_the_sam_gradient():
    w, a, loss = _quadratic()
    loss().backward()
    g = (a * w).detach()
    regularise_gradients([w], loss, rho=0.1, strength=1.0)
    assert torch.allclose(w.grad, a * (w.detach() + 0.1 * g / g.norm()))


def test_lora_on_the_standin_starts_equal_and_only_lora_trains():
    torch.manual_seed(0)
    vit = PromptableViT(8, dim=16, depth=2, heads=2, mlp_dim=16).eval()
    x = torch.randn(4, 1, 28, 28)
    before = vit(x)
    frozen = {k: v.clone() for k, v in vit.state_dict().items()}
    lora = apply_lora(vit.requires_grad_(False), "standin_vit", rank=2)
    assert torch.allclose(lora(x), before)  # B = 0: the wrapped model is the original
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for n, p in lora.named_parameters() if p.requires_grad) == 2 * 3 * 2 * (16 + 16)
    params = [p for p in lora.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    y = torch.tensor([0, 1, 2, 3])
    text = F.normalize(torch.randn(5, 8), dim=-1)

    def loss():
        return F.cross_entropy(10 * lora(x) @ text.T, y)

    for _ in range(3):
        optimizer.zero_grad()
        loss().backward()
        cosine = regularise_gradients(params, loss)
        assert all(torch.isfinite(p.grad).all() for p in params) and -1 <= cosine <= 1
        optimizer.step()
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in lora.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], v) for k, v in frozen.items())  # pre-trained weights untouched
    assert not torch.allclose(lora(x), before)


def test_clip_preset_covers_both_towers():
    clip = apply_lora(tiny_clip(), "clip", rank=2)
    names = [n for n, p in clip.named_parameters() if p.requires_grad]
    assert any("vision_model" in n for n in names) and any("text_model" in n for n in names)
    assert all(any(t in n for t in ("q_proj", "k_proj", "v_proj")) for n in names)


def _fit(adapter, steps=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g))
    fit(model, [batch], torch.optim.SGD(model.parameters(), lr=0.5), F.cross_entropy, epochs=steps,
        adapters=[adapter] if adapter else [], show_progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_adapter_differs_from_plain_training_and_matches_it_at_zero_strength():
    plain = _fit(None)
    assert torch.equal(_fit(GLAD(F.cross_entropy, strength=0.0)), plain)
    assert not torch.allclose(_fit(GLAD(F.cross_entropy, rho=0.5, strength=1.0)), plain)


@pytest.mark.parametrize("make", [
    lambda: GLAD(F.cross_entropy, rho=-1.0),
    lambda: GLAD(F.cross_entropy, strength=2.0),
    lambda: GLAD(F.cross_entropy, rho=math.inf),
    lambda: GLAD(None),
    lambda: apply_lora(nn.Linear(2, 2), "standin_vti"),
    lambda: apply_lora(nn.Sequential(nn.Linear(2, 2)), ["query"]),
    lambda: apply_lora(nn.Sequential(nn.Linear(2, 2)), ["0"], alpha=0.0),
])
def test_bad_arguments_raise(make):
    with pytest.raises(PriorlabError):
        make()


def test_bad_inputs_to_regularise_gradients_raise():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(PriorlabError, match="backward"):
        regularise_gradients([w], lambda: w.sum())
    w.grad = torch.tensor([math.nan, 1.0])
    with pytest.raises(PriorlabError, match="NaN"):
        regularise_gradients([w], lambda: w.sum())
    w.grad = torch.ones(2)
    with pytest.raises(PriorlabError, match="scalar"):
        regularise_gradients([w], lambda: w * 2)
    assert torch.equal(w.detach(), torch.ones(2))  # restored even when the closure fails
    with pytest.raises(PriorlabError, match="callable"):
        regularise_gradients([w], "loss")
    with pytest.raises(PriorlabError, match="tensors"):
        regularise_gradients([1.0], lambda: w.sum())
