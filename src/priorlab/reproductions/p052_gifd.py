"""Paper 52, GIFD: gradient inversion through a generator's feature domain reconstructs the
private batch better than pixel-space and latent-only inversion, also under a defence.

Setting: a federated client shares the gradient of a small digits classifier (SmallCNN, trained
here for a few epochs on sklearn's digits at 16x16, seeded) on a private batch of ``batch_size``
held-out digits of distinct classes (labels known to the attacker, as in the paper's batch
experiments). The attacker owns the DCGAN of ``priorlab.generative`` (pretrained once on the
training digits, cached; the private images are test digits it never saw). Arms, paired by seed
(same model, batch and shared gradient):

- ``ig``: DLG/IG pixel-space inversion (cosine gradient matching + TV, pixels in [0, 1]).
- ``gi``: latent-only inversion through the generator.
- ``gifd``: GIFD: the latent search, then each intermediate generator feature within an l1 ball,
  keeping the stage with the lowest gradient-matching loss.
- ``*_pruned``: the same three attacks when the client prunes its gradient (zeroes the
  ``prune_ratio`` smallest entries of every tensor) before sharing it.

Every attack gets the same number of optimisation steps (GIFD splits them between its stages),
the official optimiser (Adam, lr 0.1, step decay) and TV weight 1e-4; nothing is tuned.
Metric: PSNR (dB) between each private image and its reconstruction (slots matched one-to-one
by least MSE), averaged over the batch. Guard: ``feature_snr``, a stand-in for the paper's LPIPS:
with ``feature_dist`` the squared distance between the features of an evaluation classifier (a
different network, trained here) of the private image and of its reconstruction, relative to
the private features' squared norm and averaged over the batch, ``feature_snr = -10 log10
feature_dist`` (dB, higher is better).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from scipy.optimize import linear_sum_assignment

from priorlab.errors import did_you_mean
from priorlab.fields import psnr
from priorlab.generative.evaluate import image_grid, pretrained_classifier
from priorlab.generative.gan import digit_images, pretrained_gan
from priorlab.generative.inversion import (
    invert_features,
    invert_latent,
    invert_pixels,
    shared_gradients,
)
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.models import SmallCNN
from priorlab.seed import seed_everything
from priorlab.train import accuracy

ATTACKS = ("ig", "gi", "gifd")
ARMS = ATTACKS + tuple(f"{a}_pruned" for a in ATTACKS)

# prune_ratio 0.9: the official defence config's compression 90
_COMMON = {"dataset": "digits", "image_size": 16, "latent_dim": 32, "pretrain_batch": 32,
           "pretrain_seed": 0, "batch_size": 4, "model_channels": 8, "model_lr": 1e-3,
           "lr": 0.1, "tv": 1e-4, "radii": (0.5, 1.0, 1.5), "prune_ratio": 0.9}

CLAUSES = (
    "GIFD reconstructs the private images better (PSNR) than pixel-space inversion (DLG/IG)",
    "GIFD reconstructs the private images better (PSNR) than latent-only inversion (GI)",
    "GIFD's reconstructions are also closer in a feature space (the paper: LPIPS)",
    "GIFD stays better than both under a gradient defence (here: 90% gradient pruning)",
    "it holds for large generators (BigGAN, StyleGAN2), ImageNet/FFHQ and ResNet clients",
    "it holds when the generator's training data differ from the private data (out of distribution)",
)

CLAIM = Claim(
    seed_id=52,
    method="gifd",
    statement=("Optimising a pretrained generator's latent and then its intermediate features "
               "within l1 balls (GIFD) recovers private images from shared gradients better "
               "than pixel-space (DLG/IG) and latent-only (GI) inversion, also under defences."),
    setting={
        "smoke": ("tiny GAN (4 channels, 20 steps), 2 digits per batch, 30 attack steps; checks "
                  "that the pipeline runs."),
        "full": ("16x16 sklearn digits; client: SmallCNN (8/16 channels) trained 2 epochs; batch "
                 "of 4 held-out digits of distinct classes; DCGAN (16 channels, 1,500 steps) "
                 "pretrained on the training digits. 1,600 Adam steps per attack (lr 0.1, x0.1 at "
                 "3/8, 5/8, 7/8; TV 1e-4); GIFD: 700 latent steps, then 300 on each of the 3 "
                 "intermediate features with l1 radii 0.5/1.0/1.5 x the feature's initial l1 "
                 "norm. Defended arms: each gradient tensor pruned to its 10% largest entries. "
                 "One restart per attack (official: 4). The feature guard was first declared as "
                 "an absolute distance bar (0.02 lower) and re-expressed in dB after the first "
                 "pilot seed showed clean distances of only 0.0005-0.005 (that bar could never be "
                 "met); nothing else changed."),
    },
    metric="psnr",
    higher_is_better=True,
    arms=ARMS,
    # min_effect 0.5 dB: a visible gain on 16x16 digits; the paper's gains over GI/IG are larger.
    comparisons=(
        Comparison(method="gifd", baseline="ig", min_effect=0.5, clause=CLAUSES[0]),
        Comparison(method="gifd", baseline="gi", min_effect=0.5, clause=CLAUSES[1]),
        Comparison(method="gifd_pruned", baseline="ig_pruned", min_effect=0.5, clause=CLAUSES[3]),
        Comparison(method="gifd_pruned", baseline="gi_pruned", min_effect=0.5, clause=CLAUSES[3]),
    ),
    # every comparison must also raise the feature signal-to-error ratio by at least 0.5 dB (the
    # PSNR threshold, on the same log scale): the paper's second metric (LPIPS) moving the same way.
    guards=(Guard(metric="feature_snr", higher_is_better=True, kind="superiority",
                  min_effect=0.5, clause=CLAUSES[2]),),
    clauses=CLAUSES,
    untested=(
        Untested(CLAUSES[4], "CPU budget and offline weights: a 16x16 DCGAN on sklearn digits and a "
                             "two-layer CNN client stand in for BigGAN/StyleGAN2 and ResNet-18"),
        Untested(CLAUSES[5], "one generator trained on the same digit distribution as the private "
                             "batch; no second offline image domain is set up for it"),
    ),
    budget=Budget("optimisation steps per attack", ours=1600, paper=10000,
                  note="official BigGAN config: 1,000 steps for the latent and each of 9 feature "
                       "stages, 4 restarts; ours 700 + 3 x 300, 1 restart, and the baselines get "
                       "the same 1,600 steps"),
    tiers={
        "smoke": {**_COMMON, "gan_channels": 4, "pretrain_steps": 20, "classifier_epochs": 1,
                  "model_epochs": 1, "batch_size": 2, "latent_steps": 12, "layer_steps": 6},
        "full": {**_COMMON, "gan_channels": 16, "pretrain_steps": 1500, "classifier_epochs": 15,
                 "model_epochs": 2, "latent_steps": 700, "layer_steps": 300},
    },
    seeds={"smoke": 1, "full": 6},
    paper_value=("ImageNet 64x64 / FFHQ with BigGAN and StyleGAN2 against ResNet-18 (Table 1): "
                 "GIFD has the highest PSNR and lowest LPIPS of IG, GI, GIAS, GGL, also under "
                 "noise, clipping, sparsification and Soteria (Table 5); exact values not "
                 "re-checked here"),
    extra_metrics=("feature_snr", "feature_dist", "match_loss"),
)


_SETTING_KEYS = ("dataset", "image_size", "latent_dim", "gan_channels", "pretrain_steps",
                 "pretrain_batch", "pretrain_seed", "classifier_epochs")


@lru_cache(maxsize=2)
def _setting(cfg_items: tuple):
    cfg = dict(cfg_items)
    generator, _, _ = pretrained_gan(
        dataset=cfg["dataset"], image_size=cfg["image_size"], latent_dim=cfg["latent_dim"],
        channels=cfg["gan_channels"], steps=cfg["pretrain_steps"], batch_size=cfg["pretrain_batch"],
        seed=cfg["pretrain_seed"])
    judge, _ = pretrained_classifier(dataset=cfg["dataset"], image_size=cfg["image_size"],
                                     epochs=cfg["classifier_epochs"])
    train = digit_images(cfg["image_size"], "train", dataset=cfg["dataset"])
    test = digit_images(cfg["image_size"], "test", dataset=cfg["dataset"])
    return generator.eval(), judge.eval(), train, test


def _client(cfg: dict, train, seed: int) -> SmallCNN:
    """The federated client's classifier, trained briefly with Adam (seeded)."""
    x, y = train
    model = SmallCNN(10, channels=cfg["model_channels"], image_size=cfg["image_size"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["model_lr"])
    order = torch.Generator().manual_seed(seed)
    for _ in range(cfg["model_epochs"]):
        perm = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), 32):
            idx = perm[start:start + 32]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _private_batch(test, size: int, seed: int):
    x, y = test
    rng = torch.Generator().manual_seed(10_000 + seed)
    classes = torch.randperm(10, generator=rng)[:size]
    picks = [int(torch.nonzero(y == c).flatten()[torch.randint(int((y == c).sum()), (1,),
                                                               generator=rng)]) for c in classes]
    return x[picks], y[picks]


def _match(reconstruction: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """Reorder the reconstructions so slot i is the one closest (MSE) to private image i."""
    cost = (reconstruction[:, None] - private[None]).pow(2).flatten(2).mean(2)
    rows, cols = linear_sum_assignment(cost.T.numpy())
    return reconstruction[torch.as_tensor(cols[rows.argsort()])]


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    attack = arm.removesuffix("_pruned")
    torch.set_num_threads(1)
    generator, judge, train, test = _setting(tuple((k, cfg[k]) for k in _SETTING_KEYS))
    seed_everything(seed)
    model = _client(cfg, train, seed)
    private, labels = _private_batch(test, cfg["batch_size"], seed)
    prune = cfg["prune_ratio"] if arm.endswith("_pruned") else 0.0
    target = shared_gradients(model, private, labels, prune_ratio=prune)
    total = cfg["latent_steps"] + len(cfg["radii"]) * cfg["layer_steps"]
    common = {"lr": cfg["lr"], "tv": cfg["tv"], "seed": seed}
    if attack == "ig":
        result = invert_pixels(model, target, labels, tuple(private.shape[1:]), steps=total, **common)
    elif attack == "gi":
        result = invert_latent(model, target, labels, generator, steps=total, **common)
    else:
        result = invert_features(model, target, labels, generator, latent_steps=cfg["latent_steps"],
                                 layer_steps=cfg["layer_steps"], radii=cfg["radii"], **common)
    images = _match(result.images, private)
    with torch.no_grad():
        real_features = judge.features(private)
        gap = (judge.features(images) - real_features).pow(2).sum(1)
        feature_dist = float((gap / real_features.pow(2).sum(1).clamp(min=1e-12)).mean())
    metrics = {"psnr": psnr(images, private), "feature_dist": feature_dist,
               "feature_snr": -10 * math.log10(max(feature_dist, 1e-12)), "match_loss": result.loss}
    info = {"stage": result.stage, "stage_losses": result.stage_losses, "attack_steps": total,
            "prune_ratio": prune, "labels": labels.tolist(),
            "client_test_acc": accuracy(model, *test),
            # top row: the private batch; bottom row: what the attack recovered from its gradients
            "private_and_reconstruction_image": image_grid(torch.cat([private, images]),
                                                           columns=len(private))}
    return RunOutput(metrics=metrics, info=info,
                     resolution={"psnr": 0.1, "feature_snr": 0.1, "feature_dist": 1e-4,
                                 "match_loss": 1e-4})
