"""Paper 27, rRCM: contrastive-denoising pretraining + consistency fine-tuning certifies more
test points than Gaussian-augmentation training at the same smoothing noise.

Both arms train the same noise-conditioned MLP (encoder + linear head) on 8x8 digits and are
certified with randomised smoothing (Cohen et al. CERTIFY, sigma 0.5 in [0, 1] pixels, n0 50,
n 500, alpha 0.001) on the same test points. ``gaussian``: cross-entropy on x + sigma*eps from
scratch (Cohen et al.). ``rrcm``: unlabelled rRCM pretraining (InfoNCE between adjacent noise
levels + InfoNCE between augmented views against an EMA target), then fine-tuning on two noisy
copies with cross-entropy + consistency (lbd 20, eta 0.5, the official values for this noise).
Certified accuracy at l2 radius r = share of test points certified correct with radius >= r
(r = 0: correct and not abstained). With n = 500 and alpha 0.001 the largest certifiable radius
is 0.5 * Phi^-1(0.001^(1/500)) ~ 1.1, so r = 1.0 is barely reachable by design of the budget.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.images import ImageData, load_images
from priorlab.errors import did_you_mean
from priorlab.functional.rrcm import (
    ema_update,
    karras_sigmas,
    noise_consistency_loss,
    rrcm_pretrain_loss,
)
from priorlab.harness.claim import Claim, Comparison, RunOutput
from priorlab.methods.rrcm import NoiseConditionedEncoder, NoisyClassifier
from priorlab.robust.smoothing import ABSTAIN, certify
from priorlab.seed import seed_everything
from priorlab.train import shuffled_batches

ARMS = ("gaussian", "rrcm")
RADII = (0.0, 0.25, 0.5, 1.0)

_COMMON = {"dataset": "digits", "hidden": 256, "proj_dim": 64, "lr": 1e-3, "batch_size": 128, "sigma": 0.5,
               "num_scales": 20, "sigma_min": 0.002, "sigma_max": 4.0, "rho": 7.0, "tau": 0.2, "ema": 0.99,
               "lbd": 20.0, "eta": 0.5, "ft_lr": 2e-4, "ft_layer_decay": 0.75,
               "ft_warmup_frac": 0.1, "jitter": 0.02, "n0": 50, "alpha": 0.001}

CLAIM = Claim(
    seed_id=27,
    method="rrcm",
    revision=2,
    statement=("rRCM (contrastive denoising pretraining + consistency fine-tuning) gives higher "
               "randomised-smoothing certified accuracy than Gaussian-augmentation training, "
               "with the largest gains at larger radii."),
    setting={
        "smoke": "8x8 digits, a few epochs, 20 test points, n = 100; checks the plumbing only.",
        "full": ("scikit-learn 8x8 digits (1,078 train; the first 200 test images), MLP "
                 "encoder 65-256-256 + linear head; sigma 0.5 in [0, 1] pixels. gaussian: 60 "
                 "epochs of cross-entropy on noisy inputs. rrcm: 60 epochs of unlabelled "
                 "pretraining (20-scale Karras grid 0.002..4, tau 0.2, EMA 0.99, views = 1-pixel "
                 "shifts + 0.02 Gaussian jitter) then 60 epochs of fine-tuning (2 noisy copies, "
                 "consistency lbd 20, eta 0.5) with rrcm_tune.py's optimiser (AdamW 1e-4 = 2e-4 x 128/256, "
                 "layer-wise lr decay 0.75, 6 warm-up epochs then cosine). Pretraining and the "
                 "gaussian arm: Adam 1e-3, batch 128. CERTIFY with n0 50, n 500, "
                 "alpha 0.001 (the paper: 100k samples)."),
    },
    metric="cert_acc_r050",
    higher_is_better=True,
    arms=ARMS,
    # The paper's average gain over the strongest baselines is ~5 points of certified accuracy;
    # against Gaussian augmentation it is larger. 3 points at r = 0.5 is a conservative bar.
    comparisons=(Comparison("rrcm", "gaussian", "superiority", min_effect=0.03),),
    tiers={
        "smoke": dict(_COMMON, pretrain_epochs=2, finetune_epochs=3, n_test=20, n=100),
        "full": dict(_COMMON, pretrain_epochs=60, finetune_epochs=60, n_test=200, n=500),
    },
    seeds={"smoke": 2, "full": 5},
    paper_value=("CIFAR-10 / ImageNet certified accuracy above diffusion-based smoothing by 5.3 "
                 "points on average (ImageNet), up to 11.6 at larger radii"),
    curves=("certified_accuracy",),
    extra_metrics=("cert_acc_r000", "cert_acc_r025", "cert_acc_r100", "acr", "noisy_acc"),
)


@lru_cache(maxsize=2)
def _data(name: str) -> ImageData:
    return load_images(name, split_seed=0)


def _shift_views(x: torch.Tensor, jitter: float, gen: torch.Generator) -> torch.Tensor:
    """A random shift of up to one pixel per image (zero padding) plus small Gaussian jitter."""
    size = x.shape[-1]
    padded = F.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (len(x), 2), generator=gen)
    shifted = torch.stack([padded[i, :, dy:dy + size, dx:dx + size]
                           for i, (dy, dx) in enumerate(offsets.tolist())])
    return shifted + jitter * torch.randn(x.shape, generator=gen)


def _pretrain(encoder, x_train, cfg, gen) -> list[float]:
    target = copy.deepcopy(encoder).requires_grad_(False)
    sigmas = karras_sigmas(cfg["num_scales"], cfg["sigma_min"], cfg["sigma_max"], cfg["rho"])
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg["lr"])
    losses = []
    for _ in range(cfg["pretrain_epochs"]):
        total = 0.0
        for idx in shuffled_batches(len(x_train), cfg["batch_size"], gen):
            x = x_train[idx]
            view_a, view_b = (_shift_views(x, cfg["jitter"], gen) for _ in range(2))
            steps = torch.randint(0, cfg["num_scales"] - 1, (len(x),), generator=gen)
            terms = rrcm_pretrain_loss(encoder, target, x, view_a, view_b, sigmas, steps,
                                       tau=cfg["tau"], noise=torch.randn(x.shape, generator=gen))
            loss = terms["contrastive"] + terms["consistency"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema_update(target, encoder, cfg["ema"])
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(x_train))
    return losses


def _official_finetune_optimizer(model: NoisyClassifier, cfg: dict, epochs: int):
    """rrcm_tune.py's consistency fine-tuning optimiser: AdamW (no weight decay) at
    ``ft_lr * batch / 256`` (scale_lr), layer-wise lr decay (the head at full lr, each layer below
    one more factor of ``ft_layer_decay``), linear warm-up then cosine to 0, stepped per epoch."""
    layers = [model.encoder.trunk[0], model.encoder.trunk[2], model.head]
    base_lr = cfg["ft_lr"] * cfg["batch_size"] / 256
    groups = [{"params": list(layer.parameters()),
               "lr": base_lr * cfg["ft_layer_decay"] ** (len(layers) - 1 - depth)}
              for depth, layer in enumerate(layers)]
    opt = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.999), weight_decay=0.0)
    warmup = max(1, round(cfg["ft_warmup_frac"] * epochs))

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _finetune(model, data, cfg, gen, consistency: bool) -> None:
    epochs = cfg["finetune_epochs"]
    if consistency:
        with torch.no_grad():  # rrcm_tune.py's head: zero bias, trunc-normal weights, std 2e-5
            torch.nn.init.trunc_normal_(model.head.weight, std=2e-5, generator=gen)
            model.head.bias.zero_()
        opt, schedule = _official_finetune_optimizer(model, cfg, epochs)
    else:  # Gaussian augmentation (Cohen et al.): plain cross-entropy, Adam at a constant lr
        opt, schedule = torch.optim.Adam(model.parameters(), lr=cfg["lr"]), None
    copies = 2 if consistency else 1
    for _ in range(epochs):
        for idx in shuffled_batches(len(data.y_train), cfg["batch_size"], gen):
            x, y = data.x_train[idx], data.y_train[idx]
            logits = [model(x + cfg["sigma"] * torch.randn(x.shape, generator=gen))
                      for _ in range(copies)]
            loss = sum(F.cross_entropy(lg, y) for lg in logits) / copies
            if consistency:
                loss = loss + noise_consistency_loss(logits, cfg["lbd"], cfg["eta"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if schedule is not None:
            schedule.step()


@torch.no_grad()
def _accuracy(model, x, y, sigma: float, gen) -> float:
    noisy = x + sigma * torch.randn(x.shape, generator=gen) if sigma else x
    return float((model(noisy).argmax(1) == y).float().mean())


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm of paper 27 (rRCM)")
    data = _data(cfg["dataset"])
    gen = seed_everything(seed)
    encoder = NoiseConditionedEncoder(data.x_train[0].numel(), cfg["hidden"], cfg["proj_dim"])
    curves, info = {}, {}
    if arm == "rrcm":
        losses = _pretrain(encoder, data.x_train, cfg, gen)
        curves["pretrain_loss"] = {"x": list(range(1, len(losses) + 1)), "y": losses}
    model = NoisyClassifier(encoder, data.num_classes, cfg["sigma"])
    _finetune(model, data, cfg, gen, consistency=arm == "rrcm")
    model.eval()
    # training health on the validation split (a collapsed classifier shows here first)
    info["val_clean_acc"] = _accuracy(model, data.x_val, data.y_val, 0.0, gen)
    info["val_noisy_acc"] = _accuracy(model, data.x_val, data.y_val, cfg["sigma"], gen)
    x_test, y_test = data.x_test[:cfg["n_test"]], data.y_test[:cfg["n_test"]]
    radii = []
    with torch.no_grad():
        noisy_acc = float((model(x_test + cfg["sigma"] * torch.randn(x_test.shape, generator=gen))
                           .argmax(1) == y_test).float().mean())
        for x, y in zip(x_test, y_test):
            label, radius = certify(model, x, cfg["sigma"], cfg["n0"], cfg["n"], cfg["alpha"],
                                    batch=cfg["n"], generator=gen)
            radii.append(radius if label == int(y) and label != ABSTAIN else -1.0)
    radii_t = torch.tensor(radii)
    metrics = {f"cert_acc_r{round(r * 100):03d}": float((radii_t >= r).float().mean())
               for r in RADII}
    metrics["acr"] = float(radii_t.clamp(min=0).mean())
    metrics["noisy_acc"] = noisy_acc
    grid = [i / 20 for i in range(25)]
    curves["certified_accuracy"] = {"x": grid, "y": [float((radii_t >= r).float().mean())
                                                     for r in grid]}
    info["max_certifiable_radius"] = float(max(radii_t.max(), 0.0))
    return RunOutput(metrics=metrics, curves=curves, info=info)
