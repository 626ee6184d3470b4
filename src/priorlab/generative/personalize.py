"""Personalising the tiny text-to-image model with a new pseudo-word (papers 48, 14, 35).

Textual inversion (Gal et al. 2022, "An Image is Worth One Word", arXiv 2208.01618) learns the
input embedding of a pseudo-word ``*`` so that the frozen text encoder and the frozen denoiser
render a concept shown in a few images. NeTI, CoRe and ProFusion change how that embedding is
represented, regularised or predicted; this module holds what they share:

- :func:`placeholder_states`: the causal MiniLM states of prompts such as ``"a thick *"`` with
  the ``*`` token's input embedding replaced — differentiable, so the embedding can be learnt;
- :func:`diffusion_loss`: the DDPM epsilon MSE that textual inversion minimises;
- :func:`invert_concept`: the inversion loop they share (captions of ``*``, denoising loss,
  AdamW on whatever represents the concept); :func:`textual_inversion`, the plain baseline, is
  that loop on one embedding;
- the protocol: :func:`held_out_diffusion` is the cached model trained on digits WITHOUT class
  9, so "nine" is a concept it has never seen; :func:`concept_images` are the few images of it;
  :func:`concept_scores` measures both axes personalisation papers trade off — identity (do
  samples of ``"a *"`` show the concept) and editability (does a composed prompt's attribute,
  thick or thin strokes, take effect while the concept stays).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.generative.diffusion import (
    MAX_TOKENS,
    TEXT_DIM,
    add_noise,
    causal_mask,
    ink_mass,
    pretrained_diffusion,
)
from priorlab.generative.gan import digit_images
from priorlab.validation import check_number, check_tensor

PLACEHOLDER = "*"  # one MiniLM word-piece: prompts read "a *", "a thick *"
TEMPLATES = ("a {}", "a picture of a {}")  # the captions the model was trained on
CONCEPT_PROMPTS = {"plain": "a *", "thick": "a thick *", "thin": "a thin *"}
SUPER_CATEGORY = "digit"  # the word the concept's embedding starts from (TI's initializer token)


def word_embedding(word: str) -> torch.Tensor:
    """MiniLM's input embedding (384,) of a single-word-piece ``word``."""
    from priorlab.vl.text import load_minilm
    tokenizer, model = load_minilm()
    pieces = tokenizer.tokenize(word)
    if len(pieces) != 1:
        raise PriorlabError(f"word_embedding: {word!r} is {len(pieces)} word pieces {pieces}; "
                            "use a word MiniLM's vocabulary holds whole")
    token = tokenizer.convert_tokens_to_ids(pieces[0])
    return model.embeddings.word_embeddings.weight[token].detach().clone()


def placeholder_states(prompts: Sequence[str], embedding: torch.Tensor,
                       max_length: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal MiniLM states (N, max_length, 384) of ``prompts``, each holding ``*`` once, with
    the ``*`` token's input embedding replaced by ``embedding`` ((384,) shared or (N, 384) one per
    prompt), and the position of ``*`` per prompt (N,). Gradients reach ``embedding``; with the
    embedding of a real word the states equal :func:`~priorlab.generative.diffusion.prompt_tokens`
    of the prompt with that word."""
    from priorlab.vl.text import load_minilm
    who = "placeholder_states"
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise PriorlabError(f"{who}: prompts must be a non-empty list of strings, got {prompts!r}")
    check_tensor(embedding, "embedding", who=who, ndim=(1, 2), dtype="float", finite=True)
    if embedding.shape[-1] != TEXT_DIM or (embedding.ndim == 2 and len(embedding) != len(prompts)):
        raise PriorlabError(f"{who}: embedding must be ({TEXT_DIM},) or ({len(prompts)}, {TEXT_DIM}), "
                            f"got {tuple(embedding.shape)}")
    tokenizer, model = load_minilm()
    batch = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                      return_tensors="pt")
    is_star = batch["input_ids"] == tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    bad = [p for p, n in zip(prompts, is_star.sum(1).tolist()) if n != 1]
    if bad:
        raise PriorlabError(f"{who}: every prompt must hold {PLACEHOLDER!r} exactly once (within "
                            f"{max_length} tokens); not so for {bad[:3]}")
    words = model.embeddings.word_embeddings(batch["input_ids"]).to(embedding.dtype)
    per_prompt = embedding.expand(len(prompts), -1) if embedding.ndim == 1 else embedding
    words = torch.where(is_star[..., None], per_prompt[:, None, :], words)
    states = model(inputs_embeds=words, attention_mask=causal_mask(batch["attention_mask"]))
    return states.last_hidden_state, is_star.float().argmax(1)


def diffusion_loss(unet, images: torch.Tensor, states: torch.Tensor, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM epsilon MSE of ``unet`` on ``images`` (N, 1, S, S) in [0, 1] under context ``states``
    (N, L, 384), at uniform random timesteps (1000-step linear schedule, as the model was trained)."""
    check_tensor(images, "images", who="diffusion_loss", ndim=4, dtype="float", non_empty=True, finite=True)
    if states.ndim != 3 or len(states) != len(images):
        raise PriorlabError(f"diffusion_loss: states must be ({len(images)}, L, {TEXT_DIM}), "
                            f"got {tuple(states.shape)}")
    noisy, noise, t = add_noise(images, generator=generator)
    return F.mse_loss(unet(noisy, t, encoder_hidden_states=states).sample, noise)


def invert_concept(unet, images: torch.Tensor, parameters: Sequence[torch.nn.Parameter],
                   condition: Callable[[list[str]], tuple[object, torch.Tensor]], *, steps: int, lr: float,
                   weight_decay: float = 0.0, batch_size: int = 8, templates: Sequence[str] = TEMPLATES,
                   seed: int = 0, extra_loss: Callable[[int], torch.Tensor] | None = None,
                   after_step: Callable[[int], None] | None = None, who: str = "invert_concept",
                   ) -> list[float]:
    """The loop every inversion here shares: each step draws ``batch_size`` of the concept's
    ``images`` and captions ``template.format("*")``, lets ``condition(prompts)`` return the
    denoiser and its context states for them, and takes an AdamW step on ``parameters`` against
    the denoising loss (plus ``extra_loss(step)``); ``after_step(step)`` runs after each step. The
    UNet stays frozen. Returns the denoising losses."""
    steps = check_number(steps, "steps", who=who, low=1, integer=True)
    check_number(lr, "lr", who=who, low=0, low_open=True)
    check_tensor(images, "images", who=who, ndim=4, dtype="float", non_empty=True, finite=True)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    rng = torch.Generator().manual_seed(seed)
    losses = []
    with frozen(unet):
        for step in range(steps):
            idx = torch.randint(len(images), (batch_size,), generator=rng)
            prompts = [templates[int(i)].format(PLACEHOLDER)
                       for i in torch.randint(len(templates), (batch_size,), generator=rng)]
            denoiser, states = condition(prompts)
            denoising = diffusion_loss(denoiser, images[idx], states, generator=rng)
            loss = denoising if extra_loss is None else denoising + extra_loss(step)
            if not torch.isfinite(loss):
                raise PriorlabError(f"{who}: non-finite loss at step {step}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(step)
            losses.append(denoising.item())
    return losses


def textual_inversion(unet, images: torch.Tensor, *, steps: int, lr: float = 5e-3, batch_size: int = 8,
                      init_word: str = SUPER_CATEGORY, templates: Sequence[str] = TEMPLATES, seed: int = 0,
                      extra_loss: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                      after_step: Callable[[torch.Tensor, int], None] | None = None,
                      ) -> tuple[torch.Tensor, list[float]]:
    """Plain textual inversion: one input embedding for ``*``, initialised at ``init_word``'s,
    learnt by the denoising loss on ``images`` with prompts ``template.format("*")`` (AdamW, no
    weight decay, as the official code); the UNet and text encoder stay frozen.
    ``extra_loss(embedding, step)`` adds a regulariser; ``after_step(embedding, step)`` runs after
    each optimiser step (e.g. CoRe's norm rescaling). Returns (embedding, denoising losses)."""
    embedding = torch.nn.Parameter(word_embedding(init_word))
    losses = invert_concept(
        unet, images, [embedding], lambda prompts: (unet, placeholder_states(prompts, embedding)[0]),
        steps=steps, lr=lr, batch_size=batch_size, templates=templates, seed=seed,
        extra_loss=None if extra_loss is None else (lambda step: extra_loss(embedding, step)),
        after_step=None if after_step is None else (lambda step: after_step(embedding, step)),
        who="textual_inversion")
    return embedding.detach(), losses


@contextmanager
def frozen(module: torch.nn.Module):
    """``module``'s parameters stop requiring gradients inside the block; restored after."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def held_out_diffusion(seed: int, held_out: int = 9, **kwargs) -> tuple[object, dict]:
    """The cached tiny text-to-image model trained on every digit class but ``held_out``."""
    return pretrained_diffusion(seed=seed, held_out=(held_out,), **kwargs)


def concept_images(label: int, n: int, seed: int, *, image_size: int = 8,
                   split: str = "train") -> torch.Tensor:
    """``n`` images (n, 1, S, S) of class ``label`` drawn with ``seed``: the concept to learn."""
    n = check_number(n, "n", who="concept_images", low=1, integer=True)
    x, y = digit_images(image_size, split)
    pool = x[y == int(label)]
    if len(pool) < n:
        raise PriorlabError(f"concept_images: the {split} split has {len(pool)} images of class {label}, "
                            f"asked for {n}")
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]


def concept_median(label: int, image_size: int = 8) -> float:
    """The median ink mass of the real train-split images of ``label``: the thick/thin threshold
    for the concept (the held-out model's own class medians have none for the class it never saw)."""
    x, y = digit_images(image_size, "train")
    return float(ink_mass(x[y == int(label)]).median())


def concept_scores(classifier: torch.nn.Module, samples: torch.Tensor, thick: torch.Tensor,
                   thin: torch.Tensor, label: int, median: float) -> dict[str, float]:
    """Both axes of personalisation from samples of ``"a *"``, ``"a thick *"`` and ``"a thin *"``.

    - ``identity``: the share of ``"a *"`` samples the classifier calls ``label``;
    - ``composed_identity``: the same share over the composed prompts' samples;
    - ``editability``: thick rate (ink mass above ``median``, the concept's real median) under
      ``"a thick *"`` minus under ``"a thin *"`` — 0 when the attribute word is ignored.
    """
    from priorlab.generative.evaluate import class_rates
    with torch.no_grad():
        composed = torch.cat([thick, thin])
        return {"identity": float(class_rates(classifier, samples)[label]),
                "composed_identity": float(class_rates(classifier, composed)[label]),
                "editability": float((ink_mass(thick) > median).float().mean()
                                     - (ink_mass(thin) > median).float().mean())}
