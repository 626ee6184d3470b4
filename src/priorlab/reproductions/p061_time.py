"""Paper 61, TIME: a closed-form cross-attention edit changes an implicit assumption of a
text-to-image model on the source prompt and related prompts, and little else.

Stand-in for Stable Diffusion (not offline): the tiny text-to-image model of
:mod:`priorlab.generative.diffusion` (a diffusers UNet2DConditionModel on 8x8 digits with the
frozen MiniLM's per-token states), trained once per seed and cached. Its captions build in an
implicit assumption: thick digits (ink mass above the class median) are always captioned "a
thick k", thin digits "a thin k" or just "a k" (k the class word, "a seven"), each in one of
two templates ("a ...", "a picture of a ..."). So "a k" means a thin digit, as "roses" means red roses.

For each edited digit k (the model restored in between, as the official code does), TIME edits
every cross-attention to_k and to_v with source "a k" and destination "a thick k"
(lam 0.1, tokens aligned as in the official code). Judged on DDIM samples with guidance, with
the same initial noise for every arm:

- efficacy: share of thick samples (ink mass above the class-k median of the training digits)
  for the source prompt "a k";
- generality: the same for the related prompt "a picture of a k" (not used in the edit);
- specificity: the share of thick samples for the unrelated prompts "a j", j != k.

Arms: ``unedited`` (the trained model) and ``time`` (edited). Recorded too: the share of
samples of the source prompt the digits classifier reads as k, the edited parameter share, the
edit's wall time, and the model's training time and FID-like score (not Inception FID).
"""

from __future__ import annotations

import time

import torch

from priorlab.errors import did_you_mean
from priorlab.functional.time_edit import align_tokens, cross_attention_layers, time_edit, undo_edit
from priorlab.generative.diffusion import (
    CAPTION_TEMPLATES,
    digit_prompt,
    ink_mass,
    pretrained_diffusion,
    prompt_tokens,
    sample,
)
from priorlab.generative.evaluate import image_grid, pretrained_classifier
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested

ARMS = ("unedited", "time")
GENERALITY_TEMPLATE = CAPTION_TEMPLATES[1]  # "a picture of a {}": related, unseen in the edit

_COMMON = {"image_size": 8, "lam": 0.1, "guidance": 3.0, "edit_keys": True}

CLAIM = Claim(
    seed_id=61,
    method="time",
    statement=("Editing the cross-attention projections in closed form so that an under-specified "
               "source prompt reads like a destination prompt with the desired attribute changes "
               "the model's implicit assumption for the source prompt, generalises to related "
               "prompts unseen in the edit, and changes unrelated prompts little; it edits a small "
               "share of the parameters in about a second."),
    setting={
        "smoke": "a barely trained tiny model (5 steps), 8 samples per prompt; checks the pipeline.",
        "full": ("Tiny diffusers UNet2DConditionModel (16/32 channels, cross-attention at 4x4 "
                 "and in the middle, causally masked MiniLM token states as context, 12 tokens), "
                 "DDPM-trained 1200 steps (batch 64, AdamW 1e-3, cosine) on 1078 captioned 8x8 "
                 "sklearn digits; DDIM 15 steps, guidance 3. TIME on to_k and to_v of all "
                 "cross-attention layers, lam 0.1, one prompt pair per edit (no augmentations); "
                 "edited digits 1, 4, 7 (each edit from the unedited model); 48 samples per "
                 "prompt and digit, same noise for both arms. Stable Diffusion v1.4, CLIP and the "
                 "TIMED prompt set are substituted by this model, MiniLM and the thin/thick "
                 "attribute."),
    },
    metric="efficacy",
    higher_is_better=True,
    arms=ARMS,
    # min_effect 0.2: the edit must move a fifth of the source samples to the new attribute to
    # count as changing an assumption (the captions make the unedited rate low).
    comparisons=(Comparison(method="time", baseline="unedited", kind="superiority", min_effect=0.2,
                            clause="the source prompt's implicit assumption changes (efficacy)"),),
    guards=(
        # 0.1: a related prompt must move visibly too, half the efficacy threshold
        Guard(metric="generality", higher_is_better=True, kind="superiority", min_effect=0.1,
              clause="related prompts unseen in the edit change too (generality)"),
        # margin 0.1: unrelated prompts may gain at most 10 points of the edited attribute
        Guard(metric="negatives_thick_rate", higher_is_better=False, kind="non-inferiority",
              margin=0.1, clause="unrelated prompts change little (specificity)"),
    ),
    clauses=("the source prompt's implicit assumption changes (efficacy)",
             "related prompts unseen in the edit change too (generality)",
             "unrelated prompts change little (specificity)",
             "the edit touches a small share of parameters in about a second",
             "this holds on Stable Diffusion across the 147 TIMED domains"),
    untested=(
        Untested("the edit touches a small share of parameters in about a second",
                 "recorded (edited_fraction, edit_seconds) but not judged: the share depends on "
                 "the model's size, and the tiny UNet is mostly cross-attention"),
        Untested("this holds on Stable Diffusion across the 147 TIMED domains",
                 "SD weights, CLIP and TIMED are not offline; one attribute (thickness) on a tiny "
                 "digits model stands in"),
    ),
    budget=Budget("prompt pairs per edit", ours=1, paper=1,
                  note="closed form, no training; the official script can add 3 template "
                       "augmentations (--with_augs), not used here"),
    tiers={
        "smoke": {**_COMMON, "channels": [8, 16], "train_steps": 5, "sample_steps": 3,
                  "n_samples": 8, "edit_digits": [7], "classifier_epochs": 1, "fd_samples": 20},
        "full": {**_COMMON, "channels": [16, 32], "train_steps": 1200, "sample_steps": 15,
                 "n_samples": 48, "edit_digits": [1, 4, 7], "classifier_epochs": 15, "fd_samples": 300},
    },
    # one run trains (or loads) the model: over a minute on CPU, so 3 seeds
    seeds={"smoke": 2, "full": 3},
    paper_value=("TIMED test set, SD v1.4: TIME efficacy, generality and specificity well above the "
                 "unedited model on efficacy/generality with a specificity drop (paper Table 1; "
                 "numbers not re-checked here)"),
    extra_metrics=("source_class_rate", "edited_fraction", "edit_seconds", "model_frechet_distance"),
)


def _thick_rate(images: torch.Tensor, median: float) -> float:
    return float((ink_mass(images) > median).float().mean())


def _edit(unet, digit: int, cfg: dict) -> tuple[dict, float]:
    source, destination = digit_prompt(digit), digit_prompt(digit, "thick")
    states, ids = prompt_tokens([source, destination])
    start = time.perf_counter()
    originals = time_edit(unet, states[:1], states[1:], [align_tokens(ids[0], ids[1])],
                          lam=cfg["lam"], edit_keys=cfg["edit_keys"])
    return originals, time.perf_counter() - start


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    unet, info = pretrained_diffusion(image_size=cfg["image_size"], channels=cfg["channels"],
                                      steps=cfg["train_steps"], seed=seed, fd_samples=cfg["fd_samples"],
                                      classifier_epochs=cfg["classifier_epochs"])
    classifier, _ = pretrained_classifier(image_size=cfg["image_size"], epochs=cfg["classifier_epochs"])
    medians, n, size = info["class_medians"], cfg["n_samples"], cfg["image_size"]
    rates = {"efficacy": [], "generality": [], "negatives_thick_rate": [], "source_class_rate": []}
    edit_seconds, n_edited, grid = [], 0, None
    for digit in cfg["edit_digits"]:
        originals = {}
        if arm == "time":
            originals, seconds = _edit(unet, digit, cfg)
            edit_seconds.append(seconds)
            n_edited = sum(w.numel() for w in originals.values())
        others = [j for j in range(10) if j != digit]
        prompts = ([digit_prompt(digit)] * n + [digit_prompt(digit, template=GENERALITY_TEMPLATE)] * n
                   + [digit_prompt(j) for j in others for _ in range(n)])
        # the same noise for every arm (seeded by seed and digit only)
        noise = torch.randn(len(prompts), 1, size, size,
                            generator=torch.Generator().manual_seed(1000 * seed + digit))
        images = sample(unet, prompts, steps=cfg["sample_steps"], guidance=cfg["guidance"], noise=noise)
        source, related, negatives = images[:n], images[n:2 * n], images[2 * n:].split(n)
        if grid is None:  # rows: the source prompt, the generality prompt, an unrelated digit
            grid = image_grid(torch.cat([source[:8], related[:8], negatives[0][:8]]), columns=min(n, 8))
        rates["efficacy"].append(_thick_rate(source, medians[digit]))
        rates["generality"].append(_thick_rate(related, medians[digit]))
        rates["negatives_thick_rate"].append(
            sum(_thick_rate(x, medians[j]) for x, j in zip(negatives, others)) / len(others))
        with torch.no_grad():
            rates["source_class_rate"].append(float((classifier(source).argmax(1) == digit).float().mean()))
        if originals:
            undo_edit(unet, originals)
    metrics = {k: sum(v) / len(v) for k, v in rates.items()}
    total = sum(p.numel() for p in unet.parameters())
    metrics["edited_fraction"] = n_edited / total
    metrics["edit_seconds"] = sum(edit_seconds) / len(edit_seconds) if edit_seconds else 0.0
    metrics["model_frechet_distance"] = info["frechet_distance"]
    step = 1 / (n * len(cfg["edit_digits"]))
    return RunOutput(
        metrics=metrics,
        info={"model_train_seconds": info["train_seconds"], "model_final_loss": info["final_loss"],
              "frechet_note": info["frechet_note"], "edited_digits": cfg["edit_digits"],
              "cross_attention_layers": [name for name, _ in cross_attention_layers(unet)],
              "per_digit": rates, "samples_image": grid},
        resolution={"efficacy": step, "generality": step, "source_class_rate": step,
                    "negatives_thick_rate": step / 9})
