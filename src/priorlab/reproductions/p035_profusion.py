"""Paper 35, ProFusion: customisation without a regulariser keeps identity and editability at
least as well as regularised textual inversion.

Stand-in for Stable Diffusion 2 and FFHQ (not offline): the tiny text-to-image model of
:mod:`priorlab.generative.diffusion` trained WITHOUT class 9 (:func:`held_out_diffusion`, cached
per seed), so "nine" is a concept it has never seen; the domain is the other digits (0-8), as
FFHQ faces are ProFusion's domain and a new face its concept. The concept is learnt from
``n_concept`` training images of a nine (the same images for every arm).

Arms (equal customisation steps, batch and prompts "a *" / "a picture of a *"):

- ``textual_inversion``: plain TI (Gal et al.): one input embedding for ``*``, initialised at
  "digit", denoising loss, frozen UNet and text encoder; lr 5e-3 (TI's default).
- ``ti_regularised``: the same plus ``lam |e - e_digit|^2``, an L2 pull of the embedding to the
  super-category word's — the regularised customisation ProFusion argues against (E4T-style
  embedding regularisation; the paper's baselines regularise this way or by prior preservation).
- ``profusion``: a PromptNet (reference image, noisy ``x_t``, ``t`` -> ``S*``) pre-trained on
  the domain images (digits 0-8) through the frozen UNet and text encoder, then fine-tuned on the
  concept images together with the UNet's attention to_q/to_k/to_v (the official notebook), no
  regulariser at either stage; "a *" is sampled with plain guidance from ``S*`` (PromptNet fed
  the sample's reference image, one of the concept images, as the official sampler does), and
  "a thick *" / "a thin *" with fusion sampling against "a thick digit" / "a thin digit".

Judged on DDIM samples (same initial noise for every arm) by
:func:`priorlab.generative.personalize.concept_scores`: identity (share of "a *" samples the
digits classifier calls 9), composed identity (the same over the composed prompts' samples),
editability (thick rate under "a thick *" minus under "a thin *"). Also recorded for ProFusion:
the composed metrics with plain sampling instead of fusion (the fusion ablation).
"""

from __future__ import annotations

import time

import torch

from priorlab.errors import did_you_mean
from priorlab.generative.diffusion import add_noise, prompt_tokens, sample_states
from priorlab.generative.evaluate import image_grid, pretrained_classifier
from priorlab.generative.gan import digit_images
from priorlab.generative.personalize import (
    CONCEPT_PROMPTS,
    PLACEHOLDER,
    SUPER_CATEGORY,
    TEMPLATES,
    concept_images,
    concept_median,
    concept_scores,
    frozen,
    held_out_diffusion,
    placeholder_states,
    textual_inversion,
    word_embedding,
)
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.nn.profusion import PromptNet, fusion_sampling

ARMS = ("textual_inversion", "ti_regularised", "profusion")
CONCEPT = 9
ATTENTION = ("to_q", "to_k", "to_v")  # the UNet weights the official customisation fine-tunes

CLAUSE_IDENTITY = "identity at least as good as regularised customisation, without a regulariser"
CLAUSE_EDIT = "editability (composed prompts take effect) at least as good as regularised customisation"
CLAUSE_COMPOSED = "the concept is kept under composed prompts"
CLAUSE_VS_TI = "identity at least as good as plain textual inversion"
CLAUSE_DETAIL = "better fine-grained detail preservation than regularised methods"
CLAUSE_FAST = "customisation from one image within half a minute on one GPU"
CLAUSE_SD = "on Stable Diffusion 2 with a PromptNet pre-trained on FFHQ faces"

_COMMON = {"image_size": 8, "concept": CONCEPT, "n_concept": 4, "batch_size": 8, "guidance": 3.0,
           "ti_lr": 5e-3,
           # the pull costs as much as the denoising loss (~0.1) one word-to-word distance (~1.5,
           # "digit" to "nine") away from "digit": strong enough to bind, weak enough to move
           "reg_lambda": 0.05, "pretrain_lr": 1e-3, "finetune_lr": 1e-3,
           "weight_decay": 1e-2, "promptnet_channels": [32, 64],
           # the official notebook's fusion settings (7 / 5 / 7 at SD's 7.5) scaled to this
           # model's guidance 3: w = w_f = 3, w_r = 3 * 5 / 7
           "reference_guidance": 2.1, "refine_steps": 1, "refine_guidance": 3.0, "refine_scale": 0.6,
           "refine_eta": 1.0}

CLAIM = Claim(
    seed_id=35,
    method="profusion",
    statement=("Customising a text-to-image model to a new concept with an encoder (PromptNet) "
               "pre-trained on the concept's domain, fine-tuned without any regulariser and sampled "
               "with fusion sampling, keeps the concept's identity at least as well as regularised "
               "customisation and plain textual inversion, and keeps editability: composed prompts "
               "take effect and the concept stays; it preserves fine details better than "
               "regularised methods, from one image in half a minute, on Stable Diffusion 2."),
    setting={
        "smoke": ("a barely trained tiny held-out model and PromptNet, 4 samples per prompt; "
                  "checks the pipeline."),
        "full": ("Tiny diffusers UNet2DConditionModel (16/32 channels, causally masked MiniLM token "
                 "states, 12 tokens) DDPM-trained 1200 steps on captioned 8x8 sklearn digits "
                 "WITHOUT class 9 (cached per seed); concept: 4 training images of a nine. TI and "
                 "regularised TI (lam 0.05 pull to 'digit'): 150 steps, batch 8, AdamW lr 5e-3. "
                 "ProFusion: PromptNet (2-level CNN, 32/64 channels) pre-trained 300 steps (batch "
                 "16, AdamW 1e-3) on digits 0-8 through the frozen model, then 150 steps (batch 8, "
                 "AdamW 1e-3, wd 1e-2) fine-tuning PromptNet + UNet to_q/to_k/to_v on the concept; "
                 "fusion sampling w 3, w_r 2.1, one fusion stage (w_f 3, S* scaled 0.6, eta 1). "
                 "DDIM 15 steps, guidance 3, 48 samples per prompt, same noise for every arm; the "
                 "digits classifier (trained on all 10 classes) judges identity. SD 2, CLIP and "
                 "FFHQ are replaced by this model, MiniLM and digits 0-8."),
    },
    metric="identity",
    higher_is_better=True,
    arms=ARMS,
    # margin 0.1: "comparable" allows a tenth of the samples to lose the concept (4-5 of 48
    # per prompt), about the seed-to-seed spread of a class rate on 48 samples
    comparisons=(
        Comparison(method="profusion", baseline="ti_regularised", kind="non-inferiority", margin=0.1,
                   clause=CLAUSE_IDENTITY),
        Comparison(method="profusion", baseline="textual_inversion", kind="non-inferiority", margin=0.1,
                   clause=CLAUSE_VS_TI),
    ),
    guards=(
        # 0.1 on a thick-minus-thin rate difference in [-1, 1]: the same tenth of samples
        Guard(metric="editability", higher_is_better=True, kind="non-inferiority", margin=0.1,
              clause=CLAUSE_EDIT),
        Guard(metric="composed_identity", higher_is_better=True, kind="non-inferiority", margin=0.1,
              clause=CLAUSE_COMPOSED),
    ),
    clauses=(CLAUSE_IDENTITY, CLAUSE_VS_TI, CLAUSE_EDIT, CLAUSE_COMPOSED, CLAUSE_DETAIL, CLAUSE_FAST,
             CLAUSE_SD),
    untested=(
        Untested(CLAUSE_DETAIL, "fine detail of 8x8 digits is not measurable beyond the class "
                                "rate; identity is tested for non-inferiority, as declared"),
        Untested(CLAUSE_FAST, "we learn from the protocol's 4 images (shared with papers 48 and "
                              "14) on CPU; wall times are recorded, not judged"),
        Untested(CLAUSE_SD, "SD 2, CLIP and FFHQ are not offline; a tiny digits model with a "
                            "held-out class stands in"),
    ),
    budget=Budget("customisation steps", ours=150, paper=100,
                  note="the official notebook fine-tunes 100 iterations at batch 4; TI arms get "
                       "the same 150 steps (TI's paper uses 5000 at SD scale); PromptNet "
                       "pre-training: 300 steps here, 80,000 in the official script"),
    tiers={
        "smoke": {**_COMMON, "channels": [8, 16], "train_steps": 5, "fd_samples": 20, "classifier_epochs": 1,
                  "pretrain_steps": 2, "pretrain_batch": 4, "steps": 2, "sample_steps": 2, "n_samples": 4},
        "full": {**_COMMON, "channels": [16, 32], "train_steps": 1200, "fd_samples": 300,
                 "classifier_epochs": 15, "pretrain_steps": 300, "pretrain_batch": 16, "steps": 150,
                 "sample_steps": 15, "n_samples": 48},
    },
    # a run takes under a minute on a quiet machine once the held-out model is cached: 5 seeds
    seeds={"smoke": 2, "full": 5},
    paper_value=("SD 2 on faces, one image: ProFusion preserves identity better than regularised "
                 "baselines (E4T, DreamBooth, textual inversion) at comparable prompt alignment "
                 "(paper Fig./Table of human and CLIP/face-similarity scores; numbers not re-checked here)"),
    extra_metrics=("composed_identity_plain_sampling", "editability_plain_sampling", "embedding_shift",
                   "customise_seconds"),
)


def _train_promptnet(unet, net: PromptNet, targets: torch.Tensor, references: torch.Tensor, *,
                     steps: int, batch_size: int, lr: float, weight_decay: float, extra_params=(),
                     seed: int) -> list[float]:
    """The official PromptNet objective: ``S* = net(reference, x_t, t)`` replaces ``*`` in the
    caption, the UNet predicts the noise of ``x_t``; no regulariser. ``targets`` and
    ``references`` are drawn independently (the notebook's ref/target sampling; in pre-training
    each image is its own reference: pass the same tensor and equal indices are used)."""
    params = list(net.parameters()) + list(extra_params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = torch.Generator().manual_seed(seed)
    same = references is targets
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(targets), (batch_size,), generator=rng)
        ref = idx if same else torch.randint(len(references), (batch_size,), generator=rng)
        reference = references[ref] * 2 - 1
        noisy, noise, t = add_noise(targets[idx], generator=rng)
        prompts = [TEMPLATES[int(i)].format(PLACEHOLDER)
                   for i in torch.randint(len(TEMPLATES), (batch_size,), generator=rng)]
        states, _ = placeholder_states(prompts, net(reference, noisy, t))
        loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=states).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _attention_params(unet) -> list[torch.nn.Parameter]:
    return [p for name, p in unet.named_parameters() if any(f".{a}." in name for a in ATTENTION)]


def _profusion(unet, images: torch.Tensor, cfg: dict, seed: int):
    """Pre-train a PromptNet on the domain (digits but the concept), then fine-tune it and the
    UNet's attention projections on the concept images. The UNet is changed in place."""
    x, y = digit_images(cfg["image_size"], "train")
    domain = x[y != cfg["concept"]]
    torch.manual_seed(seed)
    net = PromptNet(cfg["image_size"], channels=tuple(cfg["promptnet_channels"]),
                    init_embedding=word_embedding(SUPER_CATEGORY))
    with frozen(unet):
        pre = _train_promptnet(unet, net, domain, domain, steps=cfg["pretrain_steps"],
                               batch_size=cfg["pretrain_batch"], lr=cfg["pretrain_lr"], weight_decay=0.0,
                               seed=seed)
        start = time.perf_counter()
        attention = _attention_params(unet)
        for p in attention:
            p.requires_grad_(True)
        fine = _train_promptnet(unet, net, images, images.flip(0), steps=cfg["steps"],
                                batch_size=cfg["batch_size"], lr=cfg["finetune_lr"],
                                weight_decay=cfg["weight_decay"], extra_params=attention, seed=seed + 1)
    return net.eval(), pre, fine, time.perf_counter() - start


def _prompts(kind: str, n: int) -> list[str]:
    return [CONCEPT_PROMPTS[kind]] * n


def _profusion_samples(unet, net: PromptNet, images: torch.Tensor, noise: torch.Tensor, cfg: dict,
                       seed: int):
    """'a *' with plain guidance, composed prompts with fusion and (ablation) without. Sample i
    has reference image ``i mod len(images)``; PromptNet reads that image as its noisy input too
    (the official sampler's default, ``with_noise=False``), so ``S*`` depends on (image, t) only
    and the text encoder runs once per image and step."""
    n, k = len(noise), len(images)
    which = torch.arange(n) % k
    reference = images * 2 - 1

    def concept(kind):
        return lambda x, t: placeholder_states(_prompts(kind, k), net(reference, reference, t))[0][which]

    positions = {k: placeholder_states(_prompts(k, 1), word_embedding(SUPER_CATEGORY))[1].expand(n)
                 for k in ("thick", "thin")}
    uncond = prompt_tokens([""])[0]
    common = {"steps": cfg["sample_steps"], "guidance": cfg["guidance"], "noise": noise}
    out = {}
    with torch.no_grad():
        for kind in ("plain", "thick", "thin"):
            ref_states = prompt_tokens(_prompts(kind, n))[0] if kind == "plain" else prompt_tokens(
                [CONCEPT_PROMPTS[kind].replace(PLACEHOLDER, SUPER_CATEGORY)] * n)[0]
            plain = fusion_sampling(unet, concept(kind), ref_states, uncond, reference_guidance=0.0,
                                    refine_steps=0, **common)
            out[kind + "_plain"] = ((plain + 1) / 2).clamp(0, 1)
            if kind != "plain":
                fused = fusion_sampling(
                    unet, concept(kind), ref_states, uncond, positions=positions[kind],
                    reference_guidance=cfg["reference_guidance"], refine_steps=cfg["refine_steps"],
                    refine_guidance=cfg["refine_guidance"], refine_scale=cfg["refine_scale"],
                    refine_eta=cfg["refine_eta"], generator=torch.Generator().manual_seed(seed),
                    **common)
                out[kind] = ((fused + 1) / 2).clamp(0, 1)
    return out["plain_plain"], out["thick"], out["thin"], out["thick_plain"], out["thin_plain"]


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    size, n = cfg["image_size"], cfg["n_samples"]
    unet, info = held_out_diffusion(seed, held_out=cfg["concept"], image_size=size, channels=cfg["channels"],
                                    steps=cfg["train_steps"], fd_samples=cfg["fd_samples"],
                                    classifier_epochs=cfg["classifier_epochs"])
    classifier, _ = pretrained_classifier(image_size=size, epochs=cfg["classifier_epochs"])
    images = concept_images(cfg["concept"], cfg["n_concept"], seed, image_size=size)
    median = concept_median(cfg["concept"], size)
    noise = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(1000 + seed))
    init = word_embedding(SUPER_CATEGORY)
    metrics, curves = {}, {}
    if arm == "profusion":
        net, pre, fine, seconds = _profusion(unet, images, cfg, seed)
        plain, thick, thin, thick_plain, thin_plain = _profusion_samples(unet, net, images, noise, cfg, seed)
        ablation = concept_scores(classifier, plain, thick_plain, thin_plain, cfg["concept"], median)
        with torch.no_grad():
            shift = net(images * 2 - 1, images * 2 - 1, 500) - init
        curves["pretrain_loss"] = {"x": list(range(len(pre))), "y": pre}
        losses = fine
    else:
        lam = cfg["reg_lambda"] if arm == "ti_regularised" else 0.0
        start = time.perf_counter()
        embedding, losses = textual_inversion(
            unet, images, steps=cfg["steps"], lr=cfg["ti_lr"], batch_size=cfg["batch_size"], seed=seed,
            extra_loss=(lambda e, step: lam * (e - init).square().sum()) if lam else None)
        seconds = time.perf_counter() - start
        samples = {}
        for kind in ("plain", "thick", "thin"):
            states, _ = placeholder_states(_prompts(kind, n), embedding)
            samples[kind] = sample_states(unet, states.detach(), steps=cfg["sample_steps"],
                                          guidance=cfg["guidance"], noise=noise)
        plain, thick, thin = samples["plain"], samples["thick"], samples["thin"]
        ablation, shift = None, (embedding - init)[None]
    scores = concept_scores(classifier, plain, thick, thin, cfg["concept"], median)
    ablation = ablation or scores  # TI arms sample one way only
    metrics.update(scores)
    metrics["composed_identity_plain_sampling"] = ablation["composed_identity"]
    metrics["editability_plain_sampling"] = ablation["editability"]
    metrics["embedding_shift"] = float(shift.norm(dim=-1).mean())
    metrics["customise_seconds"] = seconds
    curves["customise_loss"] = {"x": list(range(len(losses))), "y": losses}
    shown = min(8, n)
    grid = image_grid(torch.cat([plain[:shown], thick[:shown], thin[:shown]]), columns=shown)
    return RunOutput(
        metrics=metrics, curves=curves,
        info={"samples_image": grid, "grid_rows": ["a *", "a thick *", "a thin *"],
              "concept_median_ink": median, "model_train_seconds": info["train_seconds"],
              "model_frechet_distance": info["frechet_distance"], "frechet_note": info["frechet_note"]},
        resolution={"identity": 1 / n, "composed_identity": 1 / (2 * n), "editability": 1 / n})
