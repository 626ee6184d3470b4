"""Paper 21, Adapt-then-Unlearn: a pretrained GAN stops making one digit class, quality kept.

Setting: a DCGAN (priorlab.generative) pretrained once on sklearn's digits upsampled to 16x16
(cached; shared by every seed, as the paper unlearns one given pretrained GAN). A digits
classifier trained here plays the user's feedback: of ``n_pool`` samples of the pretrained GAN,
the ``n_negatives`` it most confidently calls ``forget_class`` are the negatives, the samples it
calls any other class are the positives (no real training data is used after pretraining, as
in the paper). Arms, paired by seed (same pool, same evaluation latents):

- ``pretrained``: the GAN as it is (reference).
- ``finetune``: adversarial fine-tuning on the positives, same steps as stage 2, no repulsion.
- ``adapt_unlearn``: stage 1 (adapt to the negatives with EWC -> theta_N), stage 2 (fine-tune
  the pretrained GAN on the positives with the repulsion -gamma d(theta, theta_N) / d0, the
  paper's negative-L2 form with distances in units of the starting distance d0).
- ``extrapolate``: theta_G - alpha (theta_N - theta_G), the parameter-space direction the paper
  says removes the feature at a cost in quality (official extrapolate.py scans alpha).

Metric: the share of ``n_eval`` samples the classifier calls ``forget_class`` (lower is
better). Guard: ``fd_kept``, the Fréchet distance between the classifier features of samples it
calls a kept class and the real held-out images of the kept classes (an FID-like score over a
classifier trained here; NOT Inception FID).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from priorlab.errors import did_you_mean
from priorlab.generative.evaluate import class_rates, frechet_distance, pretrained_classifier
from priorlab.generative.gan import digit_images, pretrained_gan
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.methods.adapt_unlearn import adapt_to_negatives, unlearn_with_repulsion
from priorlab.seed import seed_everything

ARMS = ("pretrained", "finetune", "adapt_unlearn", "extrapolate")

_COMMON = {"dataset": "digits", "image_size": 16, "latent_dim": 32, "channels": 16,
           "pretrain_batch": 32, "pretrain_seed": 0, "forget_class": 6, "batch_size": 16,
           "lr": 2e-4, "gamma": 1.0, "kind": "negative", "relative": True,
           "extrapolate_alpha": 1.0}

CLAUSES = (
    "after unlearning the GAN rarely generates the removed class",
    "the repulsion from the adapted parameters removes the class better than fine-tuning on "
    "positives alone",
    "the quality of the remaining samples is kept",
    "parameter-space extrapolation away from the adapted parameters removes the feature but "
    "degrades quality",
    "it works on high-fidelity GANs (StyleGAN2) and feature-level unlearning (CelebA-HQ)",
)

CLAIM = Claim(
    seed_id=21,
    method="adapt-unlearn",
    statement=("Adapting a pretrained GAN to negative samples (EWC) and then retraining it on "
               "positive samples with a repulsion from the adapted parameters removes the "
               "undesired class from its samples while keeping their quality."),
    setting={
        "smoke": ("A tiny DCGAN (channels 4) pretrained for 20 steps on the 16x16 digits, a "
                  "1-epoch classifier, 10 steps per stage, 64 evaluation samples; checks the pipeline only."),
        "full": ("DCGAN (latent 32, channels 16) pretrained once for 1,500 steps (batch 32, "
                 "Adam 2e-4/0.5/0.999, non-saturating loss) on the 1,078 training digits "
                 "(sklearn 8x8 upsampled to 16x16). Classifier: small CNN, 15 epochs on the same "
                 "training digits (~97% val accuracy). Per seed: a pool of 2,000 GAN samples; "
                 "negatives = the 64 most confident class-6 samples, positives = those called "
                 "another class. Stage 1: 500 steps, batch 16, EWC weight 1e2 with the Fisher "
                 "of the generator's adversarial loss. Stage 2 and the finetune baseline: 1,000 "
                 "steps, batch 16, gamma 1, R = -d/d0 (the paper's negative-L2 form) with d the "
                 "official normalised distance and d0 its value at the start of stage 2. The "
                 "form and gamma were chosen on pilot seed 99 (not a claim seed) among the "
                 "official 1/d with gamma 1 (starts at ~3e4 here and wrecks the generator), "
                 "gamma d0/d with gamma 30, 300, 3000 (no gain over finetune up to 300, FD x4 at "
                 "3000) and -d/d0 with gamma 1 (the best trade-off). "
                 "Extrapolation: alpha 1. Evaluation: 2,000 samples from latents shared by the "
                 "arms of a seed; real reference = the 719 held-out digits (val + test splits) "
                 "of the kept classes. The paper unlearns with StyleGAN2 on 32x32 MNIST."),
    },
    metric="forget_rate",
    higher_is_better=False,
    arms=ARMS,
    # min_effect 0.02: the pretrained GAN makes the class ~9% of the time; a drop of two points
    # (40 of 2,000 samples) is the least that counts as removal rather than noise.
    comparisons=(
        Comparison(method="adapt_unlearn", baseline="pretrained", kind="superiority",
                   min_effect=0.02, clause=CLAUSES[0]),
        # min_effect 0.01 (20 of 2,000 samples): the repulsion must add a visible part of the drop
        Comparison(method="adapt_unlearn", baseline="finetune", kind="superiority",
                   min_effect=0.01, clause=CLAUSES[1]),
    ),
    # margin 3.0 on fd_kept: about a tenth of the pretrained GAN's own distance to real kept
    # digits (~30, while two real held-out halves are ~5 apart), i.e. a loss of quality the
    # classifier features can barely resolve; fixed from the pretrained GAN before any unlearning
    # run was seen.
    guards=(Guard(metric="fd_kept", higher_is_better=False, kind="non-inferiority", margin=3.0,
                  clause=CLAUSES[2]),),
    clauses=CLAUSES,
    untested=(
        Untested(CLAUSES[3], "the harness compares arms on the claim's metric only; the "
                             "extrapolate arm's forget_rate and fd_kept are reported beside the "
                             "others, without a verdict"),
        Untested(CLAUSES[4], "CPU budget and offline data: a 16x16 DCGAN on sklearn digits stands "
                             "in for StyleGAN2; no face data offline"),
    ),
    budget=Budget("stage-2 iterations (batch 16)", ours=1000, paper=1000,
                  note="official MNIST run: stage 1 2,000 iterations, stage 2 1,000, batch 16; "
                       "our stage 1 runs 500 (the small GAN has adapted by then, see "
                       "the runs' info adapted_forget_rate)"),
    tiers={
        "smoke": {**_COMMON, "channels": 4, "pretrain_steps": 20, "classifier_epochs": 1,
                  "n_pool": 128, "n_negatives": 8, "adapt_steps": 10, "unlearn_steps": 10,
                  "ewc_strength": 1e2, "n_eval": 64},
        "full": {**_COMMON, "pretrain_steps": 1500, "classifier_epochs": 15, "n_pool": 2000,
                 "n_negatives": 64, "adapt_steps": 500, "unlearn_steps": 1000,
                 "ewc_strength": 1e2, "n_eval": 2000},
    },
    seeds={"smoke": 2, "full": 5},
    paper_value=("MNIST class unlearning with StyleGAN2: the share of negative samples falls to "
                 "near zero with FID close to the pretrained GAN's (tables not re-checked here)"),
    curves=("g_loss", "penalty"),
    extra_metrics=("fd_all", "kept_tv"),
)


@lru_cache(maxsize=2)
def _setting(cfg_items: tuple):
    cfg = dict(cfg_items)
    generator, discriminator, gan_info = pretrained_gan(
        dataset=cfg["dataset"], image_size=cfg["image_size"], latent_dim=cfg["latent_dim"],
        channels=cfg["channels"], steps=cfg["pretrain_steps"], batch_size=cfg["pretrain_batch"],
        seed=cfg["pretrain_seed"])
    classifier, clf_info = pretrained_classifier(dataset=cfg["dataset"], image_size=cfg["image_size"],
                                                 epochs=cfg["classifier_epochs"])
    x_val, y_val = digit_images(cfg["image_size"], "val", dataset=cfg["dataset"])
    x_test, y_test = digit_images(cfg["image_size"], "test", dataset=cfg["dataset"])
    real, labels = torch.cat([x_val, x_test]), torch.cat([y_val, y_test])
    with torch.no_grad():
        real_kept = classifier.features(real[labels != cfg["forget_class"]])
    return generator, discriminator, classifier, real_kept, gan_info, clf_info


def _evaluate(generator, classifier, z, forget_class, real_kept, reference_rates=None):
    generator.eval()
    with torch.no_grad():
        images = generator(z)
        features = classifier.features(images)
        predicted = classifier.head(features).argmax(1)
    rates = class_rates(classifier, images)
    kept = predicted != forget_class
    kept_rates = rates.clone()
    kept_rates[forget_class] = 0
    kept_rates = kept_rates / kept_rates.sum().clamp(min=1e-12)
    out = {"forget_rate": float(rates[forget_class]),
           "fd_kept": frechet_distance(features[kept], real_kept) if kept.sum() > 1 else float("nan"),
           "fd_all": frechet_distance(features, real_kept)}
    if reference_rates is not None:
        out["kept_tv"] = float(0.5 * (kept_rates - reference_rates).abs().sum())
    return out, kept_rates


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    pretrained_g, pretrained_d, classifier, real_kept, gan_info, clf_info = _setting(
        tuple(sorted(cfg.items())))
    forget = cfg["forget_class"]
    rng = seed_everything(seed)
    z_eval = torch.randn(cfg["n_eval"], cfg["latent_dim"], generator=rng)
    pool = pretrained_g.sample(cfg["n_pool"], generator=rng)
    with torch.no_grad():
        probs = classifier(pool).softmax(1)
    predicted = probs.argmax(1)
    positives = pool[predicted != forget]
    confident = probs[:, forget].argsort(descending=True)[:cfg["n_negatives"]]
    negatives = pool[confident[predicted[confident] == forget]]
    if len(negatives) == 0:  # a tiny smoke GAN may make no class-`forget` sample at all
        negatives = pool[confident[:1]]
    _, reference = _evaluate(pretrained_g, classifier, z_eval, forget, real_kept)

    generator = pretrained_g.__class__(cfg["latent_dim"], cfg["channels"], cfg["image_size"])
    generator.load_state_dict(pretrained_g.state_dict())
    discriminator = pretrained_d.__class__(cfg["channels"], cfg["image_size"])
    discriminator.load_state_dict(pretrained_d.state_dict())
    history: dict = {"g": [], "penalty": []}
    info = {"n_positives": len(positives), "n_negatives": len(negatives),
            "gan_train_seconds": gan_info["train_seconds"], "classifier_val_acc": clf_info["val_acc"]}
    if arm in ("adapt_unlearn", "extrapolate"):
        theta_n, _ = adapt_to_negatives(generator, discriminator, negatives, steps=cfg["adapt_steps"],
                                        ewc_strength=cfg["ewc_strength"], batch_size=cfg["batch_size"],
                                        lr=cfg["lr"], rng=rng)
        adapted = pretrained_g.__class__(cfg["latent_dim"], cfg["channels"], cfg["image_size"])
        adapted.load_state_dict({**pretrained_g.state_dict(), **theta_n})
        # how far stage 1 went towards the removed class (only the adapting arms have it)
        info["adapted_forget_rate"] = _evaluate(adapted, classifier, z_eval, forget, real_kept)[0][
            "forget_rate"]
        if arm == "extrapolate":
            with torch.no_grad():
                for name, p in generator.named_parameters():
                    p.add_(cfg["extrapolate_alpha"] * (p - theta_n[name]))
        else:
            history = unlearn_with_repulsion(generator, discriminator, positives, theta_n,
                                             steps=cfg["unlearn_steps"], gamma=cfg["gamma"],
                                             kind=cfg["kind"], relative=cfg["relative"],
                                             batch_size=cfg["batch_size"],
                                             lr=cfg["lr"], rng=rng)
    elif arm == "finetune":
        history = unlearn_with_repulsion(generator, discriminator, positives, {}, steps=cfg["unlearn_steps"],
                                         gamma=0.0, batch_size=cfg["batch_size"], lr=cfg["lr"], rng=rng)
    metrics, _ = _evaluate(generator, classifier, z_eval, forget, real_kept, reference)
    curves = {}
    if history["g"]:
        every = max(1, len(history["g"]) // 50)
        steps = list(range(0, len(history["g"]), every))
        curves = {"g_loss": {"x": [float(s) for s in steps], "y": [history["g"][s] for s in steps]},
                  "penalty": {"x": [float(s) for s in steps], "y": [history["penalty"][s] for s in steps]}}
    return RunOutput(metrics=metrics, curves=curves, info=info,
                     resolution={"forget_rate": 1 / cfg["n_eval"],
                                 "fd_kept": 0.1, "fd_all": 0.1, "kept_tv": 1 / cfg["n_eval"]})
