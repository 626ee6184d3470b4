"""Smooth Diffusion (paper 13): the step-wise variation regulariser and DDIM inversion."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402

from priorlab.errors import PriorlabError  # noqa: E402
from priorlab.functional.smooth_diffusion import (  # noqa: E402
    StepVariationTarget,
    ddim_invert,
    predicted_x0,
    smooth_diffusion_loss,
    step_variation,
)

ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod


def _unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=8, norm_num_groups=8)


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 5, 16, generator=g)


def test_predicted_x0_inverts_the_forward_process_with_the_true_noise():
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    abar = torch.tensor([0.9, 0.5, 0.01])
    noisy = abar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar).sqrt().view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(predicted_x0(noisy, noise, abar), x0, atol=1e-4, rtol=1e-4)


def test_step_variation_is_the_vjp_norm_of_a_linear_map():
    torch.manual_seed(0)
    a = torch.randn(16, 16)
    noise = torch.randn(2, 1, 4, 4, requires_grad=True)
    x0_hat = (noise.flatten(1) @ a.T).reshape(2, 1, 4, 4)
    abar = torch.tensor([0.75, 0.19])
    v = step_variation(x0_hat, noise, abar, generator=torch.Generator().manual_seed(3))
    u = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3)) / 4.0
    u = u * (1 - abar).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(v, (u.flatten(1) @ a).norm(dim=1))


def test_ema_target_follows_the_official_update_and_round_trips():
    target = StepVariationTarget(decay=0.5)
    penalty = target(torch.tensor([2.0, 4.0]))  # a = 0 + 0.5 (3 - 0) = 1.5
    assert penalty.item() == pytest.approx((0.5 ** 2 + 2.5 ** 2) / 2)
    assert target.mean.item() == pytest.approx(1.5)
    copy = StepVariationTarget()
    copy.load_state_dict(target.state_dict())
    assert copy.decay == 0.5 and copy.mean.item() == pytest.approx(1.5)
    # constant norms equal to the target give no penalty
    assert target(torch.tensor([1.5, 1.5])).item() == pytest.approx(0.0)


def test_penalty_trains_the_unet_and_leaves_the_denoising_loss_unchanged():
    x0, context = _batch()
    plain_mse, zero = smooth_diffusion_loss(_unet(), x0, context, ALPHAS, None,
                                            generator=torch.Generator().manual_seed(0))
    assert zero.item() == 0.0
    unet = _unet()
    mse, penalty = smooth_diffusion_loss(unet, x0, context, ALPHAS, StepVariationTarget(),
                                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mse, plain_mse)  # same timesteps and noise
    assert penalty.item() > 0
    penalty.backward()
    grads = [p.grad for p in unet.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_regularised_training_differs_from_the_plain_fine_tune():
    x0, context = _batch()
    weights = []
    for target in (None, StepVariationTarget()):
        unet = _unet()
        optimizer = torch.optim.SGD(unet.parameters(), lr=0.1)
        mse, penalty = smooth_diffusion_loss(unet, x0, context, ALPHAS, target,
                                             generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        (mse + 10.0 * penalty).backward()
        optimizer.step()
        weights.append(torch.cat([p.detach().flatten() for p in unet.parameters()]))
    assert not torch.allclose(weights[0], weights[1])


def test_ddim_inversion_with_a_zero_denoiser_scales_by_the_last_alpha():
    zero = SimpleNamespace  # a denoiser predicting zero noise: x0_hat is the image all the way

    def denoiser(x, t, encoder_hidden_states):
        return zero(sample=torch.zeros_like(x))

    images, context = _batch(2)
    timesteps = torch.tensor([900, 600, 300, 0])
    out = ddim_invert(denoiser, images, context, ALPHAS, timesteps)
    torch.testing.assert_close(out, ALPHAS[900].sqrt() * images)


def test_lora_fine_tune_only_trains_the_adapter():
    pytest.importorskip("peft")
    from priorlab.reproductions.p013_smooth_diffusion import add_lora
    unet = _unet()
    params = add_lora(unet, 4)
    names = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert params and all("lora" in n for n in names)


@pytest.mark.parametrize("bad", [
    lambda: StepVariationTarget(decay=0.0),
    lambda: StepVariationTarget(decay=1.5),
    lambda: StepVariationTarget(decay=float("nan")),
    lambda: StepVariationTarget()(torch.tensor([1.0, float("nan")])),
    lambda: step_variation(torch.randn(2, 1, 4, 4, requires_grad=True), torch.randn(2, 1, 4, 4),
                           torch.tensor([0.5, 0.5])),  # noise is not a graph input
    lambda: step_variation(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4, requires_grad=True),
                           torch.tensor([0.5])),  # one alpha for two samples
    lambda: predicted_x0(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([0.5, 1.5])),
    lambda: predicted_x0(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 3), torch.tensor([0.5, 0.5])),
    lambda: smooth_diffusion_loss(_unet(), torch.randn(2, 1, 8, 8), torch.randn(3, 5, 16), ALPHAS, None),
    lambda: smooth_diffusion_loss(_unet(), torch.full((2, 1, 8, 8), float("nan")), torch.randn(2, 5, 16),
                                  ALPHAS, None),
    lambda: ddim_invert(_unet(), torch.randn(2, 1, 8, 8), torch.randn(2, 5, 16), ALPHAS,
                        torch.tensor([0.5, 0.1])),  # float timesteps
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()
