"""Smooth Diffusion's step-wise variation regularisation, and DDIM inversion to measure it.

Guo et al., "Smooth Diffusion: Crafting Smooth Latent Spaces in Diffusion Models", CVPR 2024,
arXiv 2312.04410 (official code: SHI-Labs/Smooth-Diffusion, ``train_smooth_diffusion.py``).

At a training step the noisy input is ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` and
the denoiser's one-step estimate of the clean image is
``x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t, c)) / sqrt(abar_t)``. The paper asks the
variation of ``x0_hat`` to be proportional to the variation of the input noise, with the same
constant at every step (Sec. 3.2, Eq. 6):

    R = E[(||J_t^T u|| - a)^2],   J_t = d x0_hat / d eps,

with ``u ~ N(0, I) / sqrt(D)`` scaled by ``sqrt(1 - abar_t)`` (D = C H W, the official code's
scaling) and ``a`` an exponential moving average of the norms (decay 0.01), as StyleGAN2's
path-length regulariser. ``J_t^T u`` is a vector-Jacobian product, taken by double backward:
``grad_eps <x0_hat, u>`` with ``create_graph=True``.

- :func:`step_variation` gives the per-sample norms ``v = ||J_t^T u||``;
- :class:`StepVariationTarget` holds the EMA target ``a`` and returns the penalty;
- :func:`smooth_diffusion_loss` is one training step's losses for any diffusers
  ``UNet2DConditionModel`` (epsilon prediction): the DDPM loss and ``R``, to be added as
  ``loss + lambda_reg * R`` (official ``lambda_reg = 1``);
- :func:`ddim_invert` maps images to initial noise by running deterministic DDIM backwards
  (used to measure inversion reconstruction, one of the paper's downstream claims).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def predicted_x0(noisy: torch.Tensor, eps_pred: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """``x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar)`` with one ``abar`` per sample."""
    check_tensor(noisy, "noisy", who="predicted_x0", dtype="float", non_empty=True)
    check_tensor(eps_pred, "eps_pred", who="predicted_x0", shape=tuple(noisy.shape), dtype="float")
    check_tensor(alpha_bar, "alpha_bar", who="predicted_x0", shape=(len(noisy),), dtype="float")
    if bool(((alpha_bar <= 0) | (alpha_bar > 1)).any()):
        raise PriorlabError("predicted_x0: alpha_bar must lie in (0, 1]")
    abar = _per_sample(alpha_bar, noisy)
    return (noisy - (1 - abar).sqrt() * eps_pred) / abar.sqrt()


def step_variation(x0_hat: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample ``||J^T u||`` with ``J = d x0_hat / d noise`` (Eq. 6 of arXiv 2312.04410).

    ``noise`` must be the leaf tensor (``requires_grad=True``) that produced ``x_t`` and hence
    ``x0_hat``; ``u ~ N(0, I) sqrt(1 - abar) / sqrt(D)`` as the official code. The graph is
    kept (``create_graph``) so the norms can be trained on.
    """
    check_tensor(x0_hat, "x0_hat", who="step_variation", dtype="float", non_empty=True)
    check_tensor(noise, "noise", who="step_variation", shape=tuple(x0_hat.shape), dtype="float")
    check_tensor(alpha_bar, "alpha_bar", who="step_variation", shape=(len(x0_hat),), dtype="float")
    if not noise.requires_grad:
        raise PriorlabError("step_variation: noise must require grad and be the input that produced "
                            "x0_hat (noise.requires_grad_(True) before adding it to x_0)")
    if not x0_hat.requires_grad:
        raise PriorlabError("step_variation: x0_hat does not depend on noise through autograd")
    dims = math.prod(x0_hat.shape[1:])
    u = torch.randn(x0_hat.shape, generator=generator, dtype=x0_hat.dtype) / math.sqrt(dims)
    u = u * _per_sample((1 - alpha_bar).sqrt(), x0_hat).detach()
    (vjp,) = torch.autograd.grad((x0_hat * u).sum(), noise, create_graph=True)
    return vjp.flatten(1).norm(dim=1)


class StepVariationTarget:
    """The EMA target ``a`` of the step-variation norms and the penalty ``mean((v - a)^2)``.

    As the official code: ``a`` starts at 0; each call first moves it,
    ``a <- a + decay (mean(v) - a)`` (the current batch's share keeps its gradient), then
    returns ``mean((v - a)^2)`` and stores ``a`` detached. ``state_dict`` round-trips ``a``.
    """

    def __init__(self, decay: float = 0.01):
        self.decay = check_number(decay, "decay", who="StepVariationTarget", low=0, high=1,
                                  low_open=True)
        self.mean = torch.zeros(())

    def __call__(self, variations: torch.Tensor) -> torch.Tensor:
        check_tensor(variations, "variations", who="StepVariationTarget", ndim=1, dtype="float",
                     non_empty=True, finite=True)
        target = self.mean + self.decay * (variations.mean() - self.mean)
        penalty = (variations - target).pow(2).mean()
        self.mean = target.detach()
        return penalty

    def state_dict(self) -> dict:
        return {"decay": self.decay, "mean": self.mean.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = check_number(state["decay"], "decay", who="StepVariationTarget", low=0, high=1,
                                  low_open=True)
        self.mean = torch.as_tensor(state["mean"]).clone()


def smooth_diffusion_loss(unet, x0: torch.Tensor, context: torch.Tensor, alphas_cumprod: torch.Tensor,
                          target: StepVariationTarget | None, *,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step's (DDPM epsilon MSE, step-variation penalty) for a diffusers UNet.

    ``x0`` (N, C, H, W) are clean latents/images, ``context`` (N, T, D) the text states,
    ``alphas_cumprod`` the scheduler's (e.g. ``DDPMScheduler(...).alphas_cumprod``). With
    ``target=None`` the penalty is 0 and no double backward is taken (the plain fine-tune).
    Train on ``mse + lambda_reg * penalty``.
    """
    check_tensor(x0, "x0", who="smooth_diffusion_loss", ndim=4, dtype="float", non_empty=True, finite=True)
    check_tensor(context, "context", who="smooth_diffusion_loss", ndim=3, dtype="float")
    check_tensor(alphas_cumprod, "alphas_cumprod", who="smooth_diffusion_loss", ndim=1, dtype="float")
    if len(context) != len(x0):
        raise PriorlabError(f"smooth_diffusion_loss: {len(context)} contexts for {len(x0)} images")
    t = torch.randint(len(alphas_cumprod), (len(x0),), generator=generator)
    alpha_bar = alphas_cumprod[t].to(x0.dtype)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).requires_grad_(target is not None)
    abar = _per_sample(alpha_bar, x0)
    noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    # the fused attention kernels have no double backward: the penalty's graph takes the math one
    with sdpa_kernel(SDPBackend.MATH) if target is not None else nullcontext():
        eps_pred = unet(noisy, t, encoder_hidden_states=context).sample
    mse = F.mse_loss(eps_pred, noise.detach())
    if target is None:
        return mse, torch.zeros((), dtype=mse.dtype)
    variations = step_variation(predicted_x0(noisy, eps_pred, alpha_bar), noise, alpha_bar,
                                generator=generator)
    return mse, target(variations)


@torch.no_grad()
def ddim_invert(unet, images: torch.Tensor, context: torch.Tensor, alphas_cumprod: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM inversion: clean ``images`` (in the model's [-1, 1] scale) -> noise.

    ``timesteps`` are the sampler's (descending, e.g. ``DDIMScheduler.timesteps``); the walk
    goes up them from ``abar = 1``, using ``eps(x, t)`` at the current latent for the step to
    ``t`` (the usual approximation, as diffusers' DDIMInverseScheduler), conditional only
    (guidance 1). Sampling the result with DDIM and guidance 1 reconstructs the images.
    """
    check_tensor(images, "images", who="ddim_invert", ndim=4, dtype="float", non_empty=True, finite=True)
    check_tensor(context, "context", who="ddim_invert", ndim=3, dtype="float")
    check_tensor(timesteps, "timesteps", who="ddim_invert", ndim=1, dtype="integer", non_empty=True)
    if len(context) != len(images):
        raise PriorlabError(f"ddim_invert: {len(context)} contexts for {len(images)} images")
    x, abar_prev = images.clone(), torch.ones((), dtype=images.dtype)
    for t in timesteps.flip(0):
        abar = alphas_cumprod[t].to(images.dtype)
        eps = unet(x, t, encoder_hidden_states=context).sample
        x0_hat = (x - (1 - abar_prev).sqrt() * eps) / abar_prev.sqrt()
        x = abar.sqrt() * x0_hat + (1 - abar).sqrt() * eps
        abar_prev = abar
    return x
