"""ProFusion (seed 35): PromptNet, the fusion stage's update, fusion sampling, the reproduction."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.generative.diffusion import tiny_unet
from priorlab.nn.profusion import PromptNet, fusion_refine, fusion_sampling

L, D = 5, 384


def _unet():
    return tiny_unet(channels=(8, 16), head_dim=4, seed=0).eval()


def _states(n, seed):
    return torch.randn(n, L, D, generator=torch.Generator().manual_seed(seed))


def test_promptnet_shapes_init_and_gradients():
    init = torch.randn(D, generator=torch.Generator().manual_seed(0))
    net = PromptNet(image_size=8, init_embedding=init)
    ref, noisy = torch.rand(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    out = net(ref, noisy, torch.tensor([1, 500, 999]))
    assert out.shape == (3, D)
    torch.testing.assert_close(out, init.expand(3, -1))  # zero head weight: S* = the init word
    net(ref, noisy, 10).square().sum().backward()  # a scalar timestep broadcasts
    assert net.head.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_promptnet_reads_reference_noisy_image_and_timestep():
    torch.manual_seed(0)
    net = PromptNet(image_size=8, channels=(8, 16), time_dim=16)
    ref, noisy = torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    base = net(ref, noisy, 100)
    for other in (net(ref.flip(-1), noisy, 100), net(ref, noisy.flip(-1), 100), net(ref, noisy, 900)):
        assert not torch.allclose(base, other)


@pytest.mark.parametrize("bad", [
    lambda: PromptNet(image_size=6, channels=(8, 16, 32)),
    lambda: PromptNet(channels=()),
    lambda: PromptNet(time_dim=7),
    lambda: PromptNet(init_embedding=torch.zeros(10)),
    lambda: PromptNet()(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8), 1),
    lambda: PromptNet()(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), 1),
    lambda: PromptNet()(torch.full((2, 1, 8, 8), math.nan), torch.rand(2, 1, 8, 8), 1),
    lambda: PromptNet()(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.tensor([1, 2, 3])),
])
def test_promptnet_bad_input(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_fusion_refine_is_the_official_closed_form_and_at_eta_1_a_step_down_and_back():
    a_t, a_p = 0.3, 0.45
    x, eps, z = (torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for eta in (0.5, 1.0):
        s2 = eta ** 2 * (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)  # DDIM's variance times eta^2
        official = (x - eps * s2 * math.sqrt(1 - a_t) / (1 - a_p)
                    + math.sqrt(s2) * z * math.sqrt((1 - a_t) * (2 - 2 * a_p - s2)) / (1 - a_p))
        torch.testing.assert_close(fusion_refine(x, eps, a_t, a_p, eta=eta, noise=z), official)
    # eta 1: DDPM posterior step to t-1 (mean sqrt(a_p) x0 + sqrt(1 - a_p - s2) eps), then the
    # forward process to t: the same mean and variance
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    mean = math.sqrt(a_t / a_p) * (math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - s2) * eps)
    torch.testing.assert_close(fusion_refine(x, eps, a_t, a_p, noise=torch.zeros_like(x)), mean)
    two_step_var = a_t / a_p * s2 + (1 - a_t / a_p)
    step = fusion_refine(x, eps, a_t, a_p, noise=torch.ones_like(x)) - mean
    assert float(step.mean() ** 2) == pytest.approx(two_step_var, rel=1e-4)
    # eta 0 leaves x alone; finite where the closed form is 0/0 (alpha_prev = 1, last step)
    torch.testing.assert_close(fusion_refine(x, eps, a_t, a_p, eta=0.0), x)
    assert torch.isfinite(fusion_refine(x, eps, a_t, 1.0)).all()
    with pytest.raises(PriorlabError, match="eta"):
        fusion_refine(x, eps, a_t, a_p, eta=1.5)
    with pytest.raises(PriorlabError, match="alpha_prev"):
        fusion_refine(x, eps, a_p, a_t)


def test_without_fusion_it_is_classifier_free_guidance():
    from diffusers import DDIMScheduler
    unet, cond, uncond = _unet(), _states(2, 1), _states(1, 2)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    out = fusion_sampling(unet, cond, _states(2, 4), uncond, steps=4, guidance=3.0,
                          reference_guidance=0.0, refine_steps=0, noise=noise)
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    scheduler.set_timesteps(4)
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat(
                [uncond.expand(2, -1, -1), cond])).sample.chunk(2)
            x = scheduler.step(eps_u + 3.0 * (eps_c - eps_u), t, x).prev_sample
    torch.testing.assert_close(out, x)


def test_fusion_reads_reference_prompt_and_scaled_concept_per_step():
    unet, ref, uncond = _unet(), _states(2, 4), _states(1, 2)
    cond, calls = _states(2, 1), []

    def concept(x, t):
        calls.append(int(t))
        return cond

    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    kwargs = {"steps": 3, "noise": noise, "positions": torch.tensor([1, 2])}
    fused = fusion_sampling(unet, concept, ref, uncond, generator=torch.Generator().manual_seed(0), **kwargs)
    assert len(calls) == 3 * 2  # one fusion stage + the sampling step, per step
    plain = fusion_sampling(unet, cond, ref, uncond, reference_guidance=0.0, refine_steps=0, **kwargs)
    assert torch.isfinite(fused).all() and not torch.allclose(fused, plain)


@pytest.mark.parametrize("change, match", [
    ({"positions": None}, "positions"),
    ({"scheduler": "ddpm"}, "DDIMScheduler"),
    ({"guidance": -1.0}, "guidance"),
    ({"refine_eta": 2.0}, "refine_eta"),
    ({"uncond": 3}, "uncond_states"),
    ({"noise": torch.zeros(2, 1, 4, 4)}, "noise"),
])
def test_fusion_sampling_bad_input(change, match):
    from diffusers import DDPMScheduler
    kwargs = {"steps": 2, "positions": torch.tensor([1, 1])}
    uncond = _states(change.pop("uncond", 1), 2)
    if change.get("scheduler") == "ddpm":
        change["scheduler"] = DDPMScheduler()
    kwargs.update(change)
    with pytest.raises(PriorlabError, match=match):
        fusion_sampling(_unet(), _states(2, 1), _states(2, 4), uncond, **kwargs)


def test_reproduction_declares_every_clause_and_runs_each_arm():
    from priorlab.reproductions import p035_profusion as R
    claim = R.CLAIM
    covered = {c.clause for c in (*claim.comparisons, *claim.guards)} | {u.clause for u in claim.untested}
    assert covered == set(claim.clauses)
    cfg = {**claim.tiers["smoke"], "n_samples": 2}
    outputs = {arm: R.run(arm, cfg, seed=0) for arm in ("textual_inversion", "profusion")}
    for out in outputs.values():
        assert {"identity", "editability", "composed_identity"} <= set(out.metrics)
        assert len(out.info["samples_image"]) == 3 * 8 + 2  # three rows of 8x8 images
    shifts = [out.metrics["embedding_shift"] for out in outputs.values()]
    assert shifts[0] != shifts[1]
    with pytest.raises(PriorlabError, match="did you mean"):
        R.run("pro_fusion", cfg, seed=0)
