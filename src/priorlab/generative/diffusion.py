"""A tiny text-to-image diffusion model, trained here once per seed and cached (family G).

Stable Diffusion's weights are not offline here, so papers that edit or personalise a
text-to-image model (TIME, Smooth Diffusion, NeTI, CoRe, ProFusion) run on a stand-in built from
the same ``diffusers`` classes:

- the denoiser is a small :class:`diffusers.UNet2DConditionModel` on grey images (8x8 digits,
  their native size, by default: a CPU budget; 16x16 works the same), with cross-attention
  (``cross_attention_dim`` 384) reading per-token text states;
- the frozen text encoder is all-MiniLM-L6-v2 (:mod:`priorlab.vl.text`) run with a causal
  attention mask, as CLIP's text tower is causal: its last hidden states for every token of the
  prompt padded to ``max_length`` (as SD pads CLIP to 77 tokens), so the cross-attention K/V
  projections see one context vector per token, and a prompt's prefix has the same states in
  every prompt that shares it (TIME's specificity rests on that);
- DDPM training (epsilon prediction, :class:`diffusers.DDPMScheduler`, 1000 steps, linear betas)
  with the prompt dropped to "" 10% of the time, and DDIM sampling with classifier-free guidance
  (:class:`diffusers.DDIMScheduler`), as SD is trained and sampled;
- data: sklearn digits (8x8, resized if asked) captioned from class names and a computable
  attribute, the stroke thickness (ink mass above or below the class median): "a seven",
  "a thick seven" (see :func:`caption_digits`).

The cache holds the UNet weights, the training time and a Fréchet distance between samples and
held-out digits over the features of :func:`priorlab.generative.evaluate.pretrained_classifier`
(an FID-like score: NOT Inception FID, not comparable with published FIDs).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.generative.gan import _atomic_save, cache_dir, digit_images
from priorlab.validation import check_number, check_tensor

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXT_DIM = 384  # MiniLM's hidden size = the UNet's cross_attention_dim
MAX_TOKENS = 12  # prompts are padded/truncated to this many MiniLM tokens
CAPTION_TEMPLATES = ("a {}", "a picture of a {}")  # what the cached model is trained on
TRAIN_TIMESTEPS = 1000  # DDPM's schedule length (linear betas), as SD


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise PriorlabError("the tiny diffusion model needs diffusers: pip install 'priorlab[diffusion]' "
                            "(diffusers>=0.30)") from None
    return diffusers


def tiny_unet(image_size: int = 8, channels: Sequence[int] = (16, 32), *, layers_per_block: int = 1,
              head_dim: int = 8, seed: int = 0):
    """A seeded :class:`diffusers.UNet2DConditionModel` for (N, 1, S, S) images: a plain ResNet
    block at full resolution, cross-attention transformer blocks at every lower level and in the
    middle block."""
    image_size = check_number(image_size, "image_size", who="tiny_unet", low=8, integer=True)
    channels = tuple(int(c) for c in channels)
    if len(channels) < 2 or any(c < 8 or c % 8 for c in channels):
        raise PriorlabError(f"tiny_unet: channels must be >= 2 multiples of 8, got {channels}")
    if image_size % 2 ** (len(channels) - 1):
        raise PriorlabError(f"tiny_unet: image_size {image_size} must be divisible by "
                            f"{2 ** (len(channels) - 1)} for {len(channels)} levels")
    torch.manual_seed(seed)
    # cross-attention only below full resolution: attention over S*S tokens dominates CPU time
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1)
    up = ("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",)
    return _diffusers().UNet2DConditionModel(
        sample_size=image_size, in_channels=1, out_channels=1, block_out_channels=channels,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=layers_per_block, cross_attention_dim=TEXT_DIM, attention_head_dim=head_dim,
        norm_num_groups=8)


@lru_cache(maxsize=64)
def _encode(prompts: tuple[str, ...], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    from priorlab.vl.text import load_minilm
    tokenizer, model = load_minilm()
    batch = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                      return_tensors="pt")
    with torch.no_grad():
        states = model(input_ids=batch["input_ids"], attention_mask=causal_mask(batch["attention_mask"]))
    return states.last_hidden_state, batch["input_ids"]


def causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, 1, L, L) boolean mask for MiniLM from its (N, L) padding mask, causal as CLIP's text
    tower: a token's state depends on earlier tokens only, so "a" reads the same in "a three"
    and "a seven"."""
    length = attention_mask.shape[1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    return (causal[None] & attention_mask.bool()[:, None, :])[:, None]


def prompt_tokens(prompts: Sequence[str], max_length: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen MiniLM per-token states (N, max_length, 384), causally masked, and token ids.

    Every position (padding included) is a context vector for the cross-attention, as SD feeds
    all 77 CLIP positions; the empty prompt "" is the unconditional context.
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise PriorlabError(f"prompt_tokens: prompts must be a non-empty list of strings, got {prompts!r}")
    max_length = check_number(max_length, "max_length", who="prompt_tokens", low=3, integer=True)
    unique = tuple(dict.fromkeys(prompts))
    states, ids = _encode(unique, max_length)
    index = torch.tensor([unique.index(p) for p in prompts])
    return states[index].clone(), ids[index].clone()


def digit_prompt(label: int, attribute: str = "", template: str = "a {}") -> str:
    """``"a thick seven"`` style prompt; ``template`` wraps ``"[attribute ]<name>"``.

    The class word is the last word, so with a causal text encoder the attribute only changes
    the states of the class word and what follows it ("a" reads the same everywhere)."""
    return template.format(f"{attribute + ' ' if attribute else ''}{DIGIT_NAMES[int(label)]}")


def ink_mass(images: torch.Tensor) -> torch.Tensor:
    """Mean intensity per image: the thickness attribute (thicker strokes = more ink)."""
    check_tensor(images, "images", who="ink_mass", ndim=4, dtype="float", non_empty=True)
    return images.mean(dim=(1, 2, 3))


def class_medians(images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Per-class median ink mass: the thin/thick threshold."""
    mass = ink_mass(images)
    return torch.stack([mass[labels == k].median() for k in range(num_classes)])


def caption_digits(images: torch.Tensor, labels: torch.Tensor, *, templates: Sequence[str] = ("a {}",),
                   p_unspecified: float = 0.5, seed: int = 0) -> list[str]:
    """Captions with a built-in implicit assumption, like "roses" meaning red roses.

    Thick digits (ink mass above their class median) are always called "a thick k"; thin digits
    are called "a thin k" or, with probability ``p_unspecified``, just "a k" (k the class
    word). So the under-specified prompt "a k" is learnt to mean a thin digit. Each caption uses
    one of ``templates`` at random.
    """
    check_number(p_unspecified, "p_unspecified", who="caption_digits", low=0, high=1)
    rng = torch.Generator().manual_seed(seed)
    thick = ink_mass(images) > class_medians(images, labels)[labels]
    drop = torch.rand(len(labels), generator=rng) < p_unspecified
    pick = torch.randint(len(templates), (len(labels),), generator=rng)
    return [digit_prompt(int(y), "thick" if t else ("" if d else "thin"), templates[int(i)])
            for y, t, d, i in zip(labels, thick, drop, pick)]


def train_diffusion(unet, images: torch.Tensor, captions: Sequence[str], *, steps: int,
                    batch_size: int = 64, lr: float = 1e-3, p_uncond: float = 0.1,
                    seed: int = 0) -> list[float]:
    """DDPM training (epsilon MSE) on images in [0, 1] (scaled to [-1, 1]); AdamW with a cosine
    decay; the caption is replaced by "" with probability ``p_uncond`` (for guidance)."""
    steps = check_number(steps, "steps", who="train_diffusion", low=1, integer=True)
    check_tensor(images, "images", who="train_diffusion", ndim=4, dtype="float", non_empty=True, finite=True)
    if len(captions) != len(images):
        raise PriorlabError(f"train_diffusion: {len(captions)} captions for {len(images)} images")
    states, _ = prompt_tokens(list(captions) + [""])
    context, empty = states[:-1], states[-1:]
    rng = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    unet.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=rng)
        noisy, noise, t = add_noise(images[idx], generator=rng)
        cond = context[idx].clone()
        cond[torch.rand(batch_size, generator=rng) < p_uncond] = empty
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=cond).sample, noise)
        if not torch.isfinite(loss):
            raise PriorlabError(f"train_diffusion: non-finite loss at step {len(losses)}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(loss.item())
    unet.eval()
    return losses


def add_noise(images: torch.Tensor, *, generator: torch.Generator | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DDPM forward process (1000-step linear schedule, as the model is trained) at uniform
    random timesteps: ``(noisy, noise, t)`` for images in [0, 1] (scaled to [-1, 1]); the noise is
    drawn before the timesteps."""
    x0 = images * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(TRAIN_TIMESTEPS, (len(images),), generator=generator)
    return _diffusers().DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS).add_noise(x0, noise, t), noise, t


@torch.no_grad()
def sample(unet, prompts: Sequence[str], *, steps: int = 20, guidance: float = 3.0,
           generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM (eta 0) samples in [0, 1], one per prompt, with classifier-free guidance
    ``eps_u + guidance (eps_c - eps_u)``. Pass ``noise`` (N, 1, S, S) to reuse initial latents
    (same noise before and after an edit)."""
    if isinstance(prompts, str) or not prompts:
        raise PriorlabError(f"sample: prompts must be a non-empty list of strings, got {prompts!r}")
    states, _ = prompt_tokens(list(prompts) + [""])
    return sample_states(unet, states[:-1], steps=steps, guidance=guidance, generator=generator, noise=noise)


@torch.no_grad()
def sample_states(unet, states: torch.Tensor, *, steps: int = 20, guidance: float = 3.0,
                  generator: torch.Generator | None = None,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`sample` from given per-prompt context states (N, L, 384) — e.g. prompts whose
    pseudo-word embedding was learnt (textual inversion) — against the empty prompt's states."""
    steps = check_number(steps, "steps", who="sample", low=1, integer=True)
    check_tensor(states, "states", who="sample", ndim=3, dtype="float", non_empty=True, finite=True)
    n, size = len(states), unet.config.sample_size
    if noise is None:
        noise = torch.randn(n, 1, size, size, generator=generator)
    check_tensor(noise, "noise", who="sample", shape=(n, 1, size, size), dtype="float")
    empty = prompt_tokens([""], max_length=states.shape[1])[0].expand(n, -1, -1)
    scheduler = _diffusers().DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    scheduler.set_timesteps(steps)
    x = noise.clone()
    for t in scheduler.timesteps:
        eps = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([empty, states])).sample
        eps_u, eps_c = eps.chunk(2)
        x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


def pretrained_diffusion(*, image_size: int = 8, channels: Sequence[int] = (16, 32), steps: int = 1200,
                         batch_size: int = 64, lr: float = 1e-3, seed: int = 0, fd_samples: int = 300,
                         classifier_epochs: int = 15, held_out: Sequence[int] = (),
                         cache: bool = True) -> tuple[object, dict]:
    """The tiny text-to-image model trained on captioned digits (train split), cached per config.

    ``held_out`` classes are left out of training (a concept the model has never seen, for
    personalisation: :mod:`priorlab.generative.personalize`); the Fréchet distance then covers
    the other classes only.

    ``info`` holds the config, ``train_seconds`` (of the run that filled the cache), the class
    medians of ink mass, and ``frechet_distance``: samples of the "a k" prompts (uniform over
    k) against the validation digits, over the evaluation classifier's features — FID-like, not
    Inception FID.
    """
    config = {"image_size": image_size, "channels": list(channels), "steps": steps,
              "batch_size": batch_size, "lr": lr, "seed": seed, "fd_samples": fd_samples,
              "classifier_epochs": classifier_epochs, "max_tokens": MAX_TOKENS, "v": 3}
    held_out = sorted({int(k) for k in held_out})
    if any(not 0 <= k < len(DIGIT_NAMES) for k in held_out) or len(held_out) >= len(DIGIT_NAMES):
        raise PriorlabError(f"pretrained_diffusion: held_out must be some (not all) of the classes "
                            f"0..9, got {held_out}")
    if held_out:  # only then in the key: the caches of models trained on every class stay valid
        config["held_out"] = held_out
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "diffusion" / f"unet_{key}.pt"
    unet = tiny_unet(image_size, channels, seed=seed)
    if not cache:
        return _train_and_score(unet, config, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one trainer per config: parallel runs (arms of one seed) wait for it, then load the cache
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                state = torch.load(path, weights_only=True)
                unet.load_state_dict(state["model"])
                return unet.eval(), json.loads(state["info"])
            return _train_and_score(unet, config, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _train_and_score(unet, config: dict, path) -> tuple[object, dict]:
    from priorlab.generative.evaluate import classifier_frechet_distance, pretrained_classifier
    image_size, seed, fd_samples = config["image_size"], config["seed"], config["fd_samples"]
    kept = [k for k in range(len(DIGIT_NAMES)) if k not in config.get("held_out", [])]
    x, y = _only(digit_images(image_size, "train"), kept)
    start = time.perf_counter()
    captions = caption_digits(x, y, templates=CAPTION_TEMPLATES, seed=seed)
    losses = train_diffusion(unet, x, captions, steps=config["steps"], batch_size=config["batch_size"],
                             lr=config["lr"], seed=seed)
    seconds = time.perf_counter() - start
    classifier, _ = pretrained_classifier(image_size=image_size, epochs=config["classifier_epochs"])
    x_val, _ = _only(digit_images(image_size, "val"), kept)
    labels = torch.tensor(kept)[torch.arange(fd_samples) % len(kept)]
    generated = sample(unet, [digit_prompt(int(k)) for k in labels],
                       generator=torch.Generator().manual_seed(seed))
    info = {**config, "train_seconds": seconds, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "class_medians": class_medians(x, y).tolist(),
            "frechet_distance": classifier_frechet_distance(classifier, generated, x_val),
            "frechet_note": "over a digits classifier trained here; not Inception FID"}
    if path is not None:
        _atomic_save({"model": unet.state_dict(), "info": json.dumps(info)}, path)
    return unet, info


def _only(data: tuple[torch.Tensor, torch.Tensor], classes: Sequence[int]):
    """The images and labels of ``classes`` only."""
    x, y = data
    keep = torch.isin(y, torch.tensor(list(classes)))
    return x[keep], y[keep]
