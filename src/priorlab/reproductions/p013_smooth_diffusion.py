"""Paper 13, Smooth Diffusion: the step-wise variation regulariser gives a smoother latent space
(steadier interpolation, better DDIM inversion) at equal sample quality.

Stand-in for Stable Diffusion 1.5 (not offline): the tiny text-to-image model of
:mod:`priorlab.generative.diffusion` (a diffusers UNet2DConditionModel on 8x8 digits with
causally masked MiniLM token states), pretrained once per seed and cached. Both arms fine-tune
that model with LoRA (peft, rank 8 on every attention projection, as the official Smooth-LoRA)
for the same steps at the same learning rate on the captioned training digits:

- ``finetune``: the DDPM epsilon loss only;
- ``smooth``: the same plus ``lambda_reg * R``, R the step-wise variation regulariser
  (:func:`priorlab.functional.smooth_diffusion.smooth_diffusion_loss`, lambda_reg 1, EMA decay
  0.01, official defaults).

Judged with the digits classifier trained here (its 128-d features), same noise for both arms:

- ``log_ppl`` (primary, lower is better): a perceptual-path-length-style score. For pairs of
  initial noises, DDIM samples ("a k" prompts, guidance 3) at K+1 slerp points; the mean over
  steps and pairs of the squared feature distance between consecutive samples divided by the
  squared step 1/K; its natural log (so the threshold is relative);
- ``inversion_psnr`` (higher is better): held-out test digits DDIM-inverted with their class
  prompt and regenerated (guidance 1, the same 15 steps), PSNR of the reconstruction;
- ``log_frechet`` (guard, lower is better): log Fréchet distance between samples and
  validation digits over the classifier's features (FID-like, NOT Inception FID).

Recorded too: the paper's ISTD (standard deviation of the consecutive-sample pixel MSEs along a
path, mean over paths), the inversion MSE and the final mean step variation.
"""

from __future__ import annotations

import math
import time

import torch

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.functional.smooth_diffusion import StepVariationTarget, ddim_invert, smooth_diffusion_loss
from priorlab.generative.diffusion import (
    CAPTION_TEMPLATES,
    _diffusers,
    caption_digits,
    digit_prompt,
    pretrained_diffusion,
    prompt_tokens,
    sample,
)
from priorlab.generative.evaluate import classifier_frechet_distance, image_grid, pretrained_classifier
from priorlab.generative.gan import digit_images
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested

ARMS = ("finetune", "smooth")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection, as Smooth-LoRA

_COMMON = {"image_size": 8, "lora_rank": 8, "lambda_reg": 1.0, "ema_decay": 0.01, "guidance": 3.0,
           "batch_size": 64, "p_uncond": 0.1, "max_grad_norm": 1.0, "weight_decay": 0.01}

CLAIM = Claim(
    seed_id=13,
    method="smooth-diffusion",
    statement=("Fine-tuning a text-to-image diffusion model with the step-wise variation "
               "regulariser (Smooth-LoRA) makes its latent space smoother than the same "
               "fine-tune without it: interpolations between initial noises change more "
               "steadily and DDIM inversion reconstructs images better, at equal sample quality."),
    setting={
        "smoke": "a barely trained tiny model (5 steps), 3 fine-tuning steps; checks the pipeline.",
        "full": ("The tiny diffusers UNet2DConditionModel of p061 (16/32 channels, 8x8 digits, "
                 "MiniLM token states, DDPM-pretrained 1200 steps, cached per seed), LoRA rank 8 on "
                 "all attention projections, fine-tuned 300 steps (batch 64, AdamW lr 1e-3, weight "
                 "decay 0.01, constant lr, grad clip 1) on the captioned training digits, with and "
                 "without R (lambda 1, EMA 0.01). DDIM 15 steps; PPL over 16 noise pairs x 8 slerp "
                 "steps (guidance 3); inversion of 100 test digits; Fréchet distance over 300 "
                 "samples. SD 1.5, LAION and LPIPS/Inception are replaced by this model, digits "
                 "and a digits classifier trained here."),
    },
    metric="log_ppl",
    higher_is_better=False,
    arms=ARMS,
    # 0.1 in log units: the path length must drop by about 10% to count as smoother
    comparisons=(Comparison(method="smooth", baseline="finetune", kind="superiority", min_effect=0.1,
                            clause="latent interpolation is smoother (lower path length)"),),
    guards=(
        # 0.25 dB: a reconstruction gain smaller than that is not visible on 8x8 digits
        Guard(metric="inversion_psnr", higher_is_better=True, kind="superiority", min_effect=0.25,
              clause="DDIM inversion reconstructs images better"),
        # margin 0.15 in log units: sample quality may be at most ~16% worse in Fréchet distance
        Guard(metric="log_frechet", higher_is_better=False, kind="non-inferiority", margin=0.15,
              clause="sample quality stays the same"),
    ),
    clauses=("latent interpolation is smoother (lower path length)",
             "DDIM inversion reconstructs images better",
             "sample quality stays the same",
             "text-based editing improves",
             "this holds for Stable Diffusion and community models as a plug-in LoRA"),
    untested=(
        Untested("text-based editing improves",
                 "needs a prompt-to-prompt/null-text editing pipeline and an editing metric; not "
                 "built for the tiny model"),
        Untested("this holds for Stable Diffusion and community models as a plug-in LoRA",
                 "SD weights, LAION and community checkpoints are not offline; one tiny digits "
                 "model stands in"),
    ),
    budget=Budget("fine-tuning steps", ours=300, paper=30000,
                  note="paper/official: LoRA rank 8 on SD 1.5, 30k steps, batch 3 x 4 GPUs x 8 "
                       "accumulation, lr 1e-4 constant; here lr 1e-3 (fixed for both arms, the "
                       "pretraining lr) on a tiny model"),
    tiers={
        "smoke": {**_COMMON, "channels": [8, 16], "train_steps": 5, "classifier_epochs": 1,
                  "fd_samples": 20, "ft_steps": 3, "lr": 1e-3, "sample_steps": 3, "n_pairs": 2,
                  "interp_steps": 4, "n_invert": 8},
        "full": {**_COMMON, "channels": [16, 32], "train_steps": 1200, "classifier_epochs": 15,
                 "fd_samples": 300, "ft_steps": 300, "lr": 1e-3, "sample_steps": 15, "n_pairs": 16,
                 "interp_steps": 8, "n_invert": 100},
    },
    # a fine-tune with double backward takes over a minute on CPU: 3 seeds
    seeds={"smoke": 2, "full": 3},
    paper_value=("SD 1.5 + Smooth-LoRA vs SD 1.5: much lower interpolation ISTD, lower DDIM "
                 "inversion reconstruction error and a comparable FID (paper's Table 1; the exact "
                 "numbers were not available offline and are not quoted here)"),
    extra_metrics=("ppl", "istd", "inversion_mse", "frechet_distance", "final_variation",
                   "finetune_seconds", "model_frechet_distance"),
)


def add_lora(unet, rank: int):
    """Freeze ``unet`` and add peft LoRA (alpha = rank, scale 1) on every attention projection."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise PriorlabError("p013: LoRA needs peft: pip install 'priorlab[diffusion]'") from None
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(LORA_TARGETS)))
    return [p for p in unet.parameters() if p.requires_grad]


def finetune(unet, arm: str, cfg: dict, seed: int) -> tuple[list[float], float]:
    """LoRA fine-tune on the captioned training digits; returns the losses and the final EMA target."""
    params = add_lora(unet, cfg["lora_rank"])
    x, y = digit_images(cfg["image_size"], "train")
    states, _ = prompt_tokens(caption_digits(x, y, templates=CAPTION_TEMPLATES, seed=seed) + [""])
    context, empty = states[:-1], states[-1:]
    alphas = _diffusers().DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    target = StepVariationTarget(cfg["ema_decay"]) if arm == "smooth" else None
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    rng = torch.Generator().manual_seed(10_000 + seed)  # the same batches, times and noise in both arms
    x0_all, losses = x * 2 - 1, []
    unet.train()
    for _ in range(cfg["ft_steps"]):
        idx = torch.randint(len(x), (cfg["batch_size"],), generator=rng)
        cond = context[idx].clone()
        cond[torch.rand(len(idx), generator=rng) < cfg["p_uncond"]] = empty
        mse, penalty = smooth_diffusion_loss(unet, x0_all[idx], cond, alphas, target, generator=rng)
        loss = mse + cfg["lambda_reg"] * penalty
        if not torch.isfinite(loss):
            raise PriorlabError(f"p013: non-finite loss at fine-tuning step {len(losses)}")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
        optimizer.step()
        losses.append(loss.item())
    unet.eval()
    return losses, float(target.mean) if target is not None else 0.0


def slerp(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between flattened noises ``a`` and ``b`` at each weight."""
    a_flat, b_flat = a.flatten(), b.flatten()
    omega = torch.arccos((a_flat @ b_flat / (a_flat.norm() * b_flat.norm())).clamp(-1, 1))
    mix = [(torch.sin((1 - w) * omega) * a_flat + torch.sin(w * omega) * b_flat) / torch.sin(omega)
           for w in weights]
    return torch.stack(mix).reshape(len(weights), *a.shape)


def interpolation_scores(unet, classifier, cfg: dict, seed: int) -> tuple[float, float, torch.Tensor]:
    """(PPL-style score, ISTD, the first path's images) over ``n_pairs`` slerp paths."""
    size, k = cfg["image_size"], cfg["interp_steps"]
    rng = torch.Generator().manual_seed(20_000 + seed)
    ends = torch.randn(cfg["n_pairs"], 2, 1, size, size, generator=rng)
    weights = torch.linspace(0, 1, k + 1)
    noise = torch.cat([slerp(a, b, weights) for a, b in ends])
    prompts = [digit_prompt(p % 10) for p in range(cfg["n_pairs"]) for _ in range(k + 1)]
    images = sample(unet, prompts, steps=cfg["sample_steps"], guidance=cfg["guidance"], noise=noise)
    with torch.no_grad():
        feats = classifier.features(images).reshape(cfg["n_pairs"], k + 1, -1)
    ppl = float((feats.diff(dim=1).pow(2).sum(-1) * k ** 2).mean())
    pixel_steps = images.reshape(cfg["n_pairs"], k + 1, -1).diff(dim=1).pow(2).mean(-1)
    istd = float(pixel_steps.std(dim=1).mean())
    return ppl, istd, images[:2 * (k + 1)]


def inversion_scores(unet, cfg: dict) -> tuple[float, float]:
    """(MSE, PSNR) of test digits DDIM-inverted with their class prompt and regenerated."""
    x, y = digit_images(cfg["image_size"], "test")
    x, y = x[:cfg["n_invert"]], y[:cfg["n_invert"]]
    prompts = [digit_prompt(int(label)) for label in y]
    scheduler = _diffusers().DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    scheduler.set_timesteps(cfg["sample_steps"])
    states, _ = prompt_tokens(prompts)
    latents = ddim_invert(unet, x * 2 - 1, states, scheduler.alphas_cumprod, scheduler.timesteps)
    rebuilt = sample(unet, prompts, steps=cfg["sample_steps"], guidance=1.0, noise=latents)
    mse = float((rebuilt - x).pow(2).mean())
    return mse, 10 * math.log10(1 / max(mse, 1e-12))


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    unet, info = pretrained_diffusion(image_size=cfg["image_size"], channels=cfg["channels"],
                                      steps=cfg["train_steps"], seed=seed, fd_samples=cfg["fd_samples"],
                                      classifier_epochs=cfg["classifier_epochs"])
    classifier, _ = pretrained_classifier(image_size=cfg["image_size"], epochs=cfg["classifier_epochs"])
    torch.manual_seed(seed)  # the LoRA initialisation, the same in both arms
    start = time.perf_counter()
    losses, variation = finetune(unet, arm, cfg, seed)
    seconds = time.perf_counter() - start
    ppl, istd, path_images = interpolation_scores(unet, classifier, cfg, seed)
    mse, psnr = inversion_scores(unet, cfg)
    labels = torch.arange(cfg["fd_samples"]) % 10
    generated = sample(unet, [digit_prompt(int(k)) for k in labels], steps=cfg["sample_steps"],
                       guidance=cfg["guidance"], generator=torch.Generator().manual_seed(30_000 + seed))
    frechet = classifier_frechet_distance(classifier, generated, digit_images(cfg["image_size"], "val")[0])
    tail = losses[-20:]
    return RunOutput(
        metrics={"log_ppl": math.log(max(ppl, 1e-12)), "ppl": ppl, "istd": istd,
                 "inversion_psnr": psnr, "inversion_mse": mse, "log_frechet": math.log(max(frechet, 1e-12)),
                 "frechet_distance": frechet, "final_variation": variation, "finetune_seconds": seconds,
                 "model_frechet_distance": info["frechet_distance"]},
        info={"final_loss": sum(tail) / len(tail), "model_train_seconds": info["train_seconds"],
              "frechet_note": "over a digits classifier trained here; not Inception FID",
              "interpolation_image": image_grid(path_images, cfg["interp_steps"] + 1)},
        resolution={"log_ppl": 0.01, "log_frechet": 0.01, "inversion_psnr": 0.01})
