"""ProFusion (paper 35): PromptNet and fusion sampling, customisation without a regulariser.

Zhou et al., "Enhancing Detail Preservation for Customized Text-to-Image Generation: A
Regularization-Free Approach", arXiv 2305.13579; official code drboog/ProFusion (read at commit
31f03ff: ``models/promptnet.py``, ``pipeline_stable_diffusion_promptnet.py``, ``train.py`` and
the customisation notebook).

- :class:`PromptNet` maps a reference image, the noisy image ``x_t`` and the timestep ``t`` to
  the input word embedding ``S*`` of the pseudo-word (one token). It is pre-trained on a domain
  with the plain denoising loss through the frozen text encoder and denoiser, then fine-tuned on
  the user's image(s) together with the denoiser's attention projections — no regulariser on
  ``S*`` at either stage (the official ``promptnet_l2_reg`` is 0).
- :func:`fusion_sampling`: with a composed prompt ``c`` holding ``S*`` ("a thick *") and the
  same prompt with the domain word instead ("a thick digit"), every DDIM step at ``t`` runs

  1. the fusion stage (``refine_steps`` times): ``e = e_u + w_f (e(x_t, c[gamma S*]) - e_u)``,
     where ``c[gamma S*]`` scales the text encoder's output state at the ``S*`` position by
     ``gamma``; then ``x_t`` is moved by the official closed-form update (:func:`fusion_refine`),
     which at ``eta = 1`` is a stochastic step to ``t-1`` with ``e`` followed by the forward
     process back to ``t`` — the fused condition enters ``x_t`` before the real step;
  2. the sampling step: ``e = e_u + w (e(x_t, c[S*]) - e_u) + w_r (e(x_t, c_ref) - e_u)``, one
     deterministic DDIM step to ``t-1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor

# Official defaults of the customisation notebook's fusion sampler (SD 2, 50 DDIM steps):
# guidance 7, reference guidance 5, one fusion stage with guidance 7, S* scaled by 0.6, eta 1.
OFFICIAL_FUSION = {"guidance": 7.0, "reference_guidance": 5.0, "refine_steps": 1,
                   "refine_guidance": 7.0, "refine_scale": 0.6, "refine_eta": 1.0}


def timestep_features(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (N, dim) of integer or float timesteps (N,), cos then sin, as the
    official PromptNet's time projection (``flip_sin_to_cos``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / half)
    angles = timesteps.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the time embedding added in between (a diffusers
    ResnetBlock2D in miniature)."""

    def __init__(self, c_in: int, c_out: int, time_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(nn.functional.silu(self.norm1(h))) + self.time(temb)[:, :, None, None]
        return self.skip(h) + self.conv2(nn.functional.silu(self.norm2(out)))


class PromptNet(nn.Module):
    """An encoder from (reference image, noisy image ``x_t``, timestep ``t``) to the pseudo-word
    input embedding ``S*`` (N, embed_dim), for small images.

    As the official PromptNet: the reference goes through ``conv_in``, the noisy image through a
    conv-SiLU-conv embedding, the two are summed and run through time-conditioned residual
    blocks that halve the resolution per level; the official model then pools features of every
    level into one token, here the last level is averaged over space and mapped linearly to
    ``embed_dim``. Both images are in the denoiser's input space (pixels in [-1, 1] here).

    ``init_embedding`` ((embed_dim,), e.g. the domain word's input embedding) initialises the
    output: the head's weight starts at zero and its bias at ``init_embedding``, so before
    training ``S*`` is that word for every input (the official head starts random).
    """

    def __init__(self, image_size: int = 8, in_channels: int = 1, embed_dim: int = 384,
                 channels: tuple[int, ...] = (32, 64), time_dim: int = 64,
                 init_embedding: torch.Tensor | None = None):
        super().__init__()
        who = "PromptNet"
        self.image_size = check_number(image_size, "image_size", who=who, low=2, integer=True)
        self.in_channels = check_number(in_channels, "in_channels", who=who, low=1, integer=True)
        self.embed_dim = check_number(embed_dim, "embed_dim", who=who, low=1, integer=True)
        time_dim = check_number(time_dim, "time_dim", who=who, low=2, integer=True)
        channels = tuple(channels)
        if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
            raise PriorlabError(f"{who}: channels must be a non-empty tuple of positive ints, got {channels}")
        if image_size % 2 ** (len(channels) - 1):
            raise PriorlabError(f"{who}: image_size {image_size} must be divisible by "
                                f"{2 ** (len(channels) - 1)} for {len(channels)} levels")
        if time_dim % 2:
            raise PriorlabError(f"{who}: time_dim must be even, got {time_dim}")
        self.time_dim = time_dim
        c0 = channels[0]
        self.reference_in = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.noisy_in = nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1), nn.SiLU(),
                                      nn.Conv2d(c0, c0, 3, padding=1))
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * c0), nn.SiLU(), nn.Linear(4 * c0, 4 * c0))
        widths = (c0,) + channels
        self.blocks = nn.ModuleList(_ResBlock(a, b, 4 * c0) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(channels[-1], embed_dim)
        if init_embedding is not None:
            check_tensor(init_embedding, "init_embedding", who=who, shape=(embed_dim,), dtype="float",
                         finite=True)
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.copy_(init_embedding)

    def forward(self, reference: torch.Tensor, noisy: torch.Tensor, timesteps) -> torch.Tensor:
        who, size = "PromptNet", self.image_size
        check_tensor(reference, "reference", who=who, shape=(None, self.in_channels, size, size),
                     dtype="float", non_empty=True, finite=True)
        check_tensor(noisy, "noisy", who=who, shape=tuple(reference.shape), dtype="float", finite=True,
                     hint="pass x_t with the reference's shape (one reference per noisy image)")
        timesteps = torch.as_tensor(timesteps)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(len(reference))
        check_tensor(timesteps, "timesteps", who=who, shape=(len(reference),), finite=True)
        temb = self.time_mlp(timestep_features(timesteps, self.time_dim))
        h = self.reference_in(reference) + self.noisy_in(noisy)
        for level, block in enumerate(self.blocks):
            h = block(h, temb)
            if level < len(self.blocks) - 1:
                h = nn.functional.avg_pool2d(h, 2)
        return self.head(h.mean(dim=(2, 3)))


def fusion_refine(x: torch.Tensor, eps: torch.Tensor, alpha_t: float, alpha_prev: float, *,
                  eta: float = 1.0, generator: torch.Generator | None = None,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """The fusion stage's update of ``x_t`` with the fused ``eps`` (``alpha_*`` the cumulative
    alphas of ``t`` and of the next sampled step ``t-1``; ``noise`` fixes the draw):
    ``x - k sqrt(1 - a_t) eps + sqrt(k (1 - a_t) (2 - k)) z`` with
    ``k = s^2 / (1 - a_p) = eta^2 (1 - a_t / a_p) / (1 - a_t)``.

    This is the official closed form ``x - eps s^2 sqrt(1 - a_t) / (1 - a_p) + s z
    sqrt((1 - a_t)(2 - 2 a_p - s^2)) / (1 - a_p)`` with ``s^2`` DDIM's variance times ``eta^2``,
    rewritten without the division by ``1 - a_p`` (0/0 on the last step of a scheduler with
    ``set_alpha_to_one``). At ``eta = 1`` it is in law a DDPM posterior step to ``t-1`` followed by
    the forward process back to ``t``: the paper's "sample x_{t-1}, then re-noise to x_t".
    """
    eta = check_number(eta, "eta", who="fusion_refine", low=0, high=1)
    a_t = check_number(alpha_t, "alpha_t", who="fusion_refine", low=0, high=1, low_open=True, high_open=True)
    a_p = check_number(alpha_prev, "alpha_prev", who="fusion_refine", low=a_t, high=1)
    z = noise if noise is not None else torch.randn(x.shape, generator=generator)
    k = eta ** 2 * (1 - a_t / a_p) / (1 - a_t)
    return x - k * math.sqrt(1 - a_t) * eps + math.sqrt(k * (1 - a_t) * (2 - k)) * z


StatesFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def fusion_sampling(unet, concept_states: torch.Tensor | StatesFn, reference_states: torch.Tensor,
                    uncond_states: torch.Tensor, *, positions: torch.Tensor | None = None,
                    steps: int = 50, guidance: float = OFFICIAL_FUSION["guidance"],
                    reference_guidance: float = OFFICIAL_FUSION["reference_guidance"],
                    refine_steps: int = OFFICIAL_FUSION["refine_steps"],
                    refine_guidance: float = OFFICIAL_FUSION["refine_guidance"],
                    refine_scale: float = OFFICIAL_FUSION["refine_scale"],
                    refine_eta: float = OFFICIAL_FUSION["refine_eta"],
                    scheduler=None, generator: torch.Generator | None = None,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """ProFusion's fusion sampling on any ``diffusers.UNet2DConditionModel``; returns the final
    ``x_0`` (N, C, S, S) in the UNet's space (pixels in [-1, 1] for a pixel-space model).

    Args:
        concept_states: the text states (N, L, D) of the composed prompt holding ``S*``, or a
            callable ``(x_t, t) -> (N, L, D)`` when ``S*`` depends on them (a PromptNet fed the
            current ``x_t`` or its reference image at step ``t``).
        reference_states: (N, L, D) states of the same prompt with the domain word for ``S*``.
        uncond_states: (1 or N, L, D) states of the empty prompt.
        positions: (N,) index of ``S*`` in each prompt; needed when ``refine_scale != 1``.
        guidance, reference_guidance: ``w`` and ``w_r`` of the sampling step.
        refine_steps, refine_guidance, refine_scale, refine_eta: the fusion stage (0 stages with
            ``reference_guidance=0`` is plain classifier-free guidance).
        scheduler: a ``diffusers.DDIMScheduler`` (default: 1000 linear-beta steps, clipped
            ``x_0``, as :mod:`priorlab.generative.diffusion` samples); ``steps`` are set on it.
        noise: the initial ``x_T`` (N, C, S, S); drawn from ``generator`` when omitted.
    """
    from diffusers import DDIMScheduler
    who = "fusion_sampling"
    steps = check_number(steps, "steps", who=who, low=1, integer=True)
    refine_steps = check_number(refine_steps, "refine_steps", who=who, low=0, integer=True)
    for name, value in (("guidance", guidance), ("reference_guidance", reference_guidance),
                        ("refine_guidance", refine_guidance)):
        check_number(value, name, who=who, low=0)
    check_number(refine_scale, "refine_scale", who=who, low=0)
    check_number(refine_eta, "refine_eta", who=who, low=0, high=1)
    check_tensor(reference_states, "reference_states", who=who, ndim=3, dtype="float", non_empty=True,
                 finite=True)
    n, length, dim = reference_states.shape
    check_tensor(uncond_states, "uncond_states", who=who, shape=(None, length, dim), dtype="float",
                 finite=True)
    if len(uncond_states) not in (1, n):
        raise PriorlabError(f"{who}: uncond_states must hold 1 or {n} prompts, got {len(uncond_states)}")
    if refine_steps and refine_scale != 1:
        if positions is None:
            raise PriorlabError(f"{who}: refine_scale {refine_scale} scales the S* state: pass positions "
                                "(the index of S* per prompt, as placeholder_states returns)")
        check_tensor(positions, "positions", who=who, shape=(n,), dtype="integer")
        if positions.min() < 0 or positions.max() >= length:
            raise PriorlabError(f"{who}: positions must lie in [0, {length}), got {positions.tolist()}")
    if scheduler is None:
        scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    if not isinstance(scheduler, DDIMScheduler):
        raise PriorlabError(f"{who}: the fusion stage needs a DDIMScheduler, got {type(scheduler).__name__}")
    channels, size = unet.config.in_channels, unet.config.sample_size
    if noise is None:
        noise = torch.randn(n, channels, size, size, generator=generator)
    check_tensor(noise, "noise", who=who, shape=(n, channels, size, size), dtype="float", finite=True)

    def concept_at(x, t):
        states = concept_states(x, t) if callable(concept_states) else concept_states
        check_tensor(states, "concept_states", who=who, shape=(n, length, dim), dtype="float", finite=True)
        return states

    uncond = uncond_states.expand(n, -1, -1)
    scheduler.set_timesteps(steps)
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod
    rows = torch.arange(n)
    x = noise.clone()
    for t in scheduler.timesteps:
        prev = int(t) - stride
        a_t, a_p = float(alphas[t]), float(alphas[prev] if prev >= 0 else scheduler.final_alpha_cumprod)
        for _ in range(refine_steps):
            scaled = concept_at(x, t).clone()
            if refine_scale != 1:
                scaled[rows, positions] = scaled[rows, positions] * refine_scale
            eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, scaled])
                                ).sample.chunk(2)
            x = fusion_refine(x, eps_u + refine_guidance * (eps_c - eps_u), a_t, a_p, eta=refine_eta,
                              generator=generator)
        eps_u, eps_c, eps_r = unet(torch.cat([x, x, x]), t, encoder_hidden_states=torch.cat(
            [uncond, concept_at(x, t), reference_states])).sample.chunk(3)
        eps = eps_u + guidance * (eps_c - eps_u) + reference_guidance * (eps_r - eps_u)
        x = scheduler.step(eps, t, x).prev_sample
    return x
