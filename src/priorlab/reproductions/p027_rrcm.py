"""Paper 27, rRCM: contrastive-denoising pretraining + consistency fine-tuning certifies more
test points than Gaussian-augmentation training at the same smoothing noise.

Both arms train the same noise-conditioned MLP (encoder + linear head) on 8x8 digits and are
certified with randomised smoothing (Cohen et al. CERTIFY, sigma 0.5 in [0, 1] pixels, n0 50,
n 500, alpha 0.001) on the same test points. Both get the same labelled budget: the same epochs,
batch, AdamW with warm-up + cosine (rrcm_tune.py's recipe, lr given per 256 examples and scaled
by batch / 256), two noisy copies per example, and a declared grid of the same size whose
setting is chosen by validation ACR (CERTIFY on the validation split). ``gaussian``:
cross-entropy on noisy inputs from scratch (Cohen et al.); grid lr x training noise.
``rrcm``: unlabelled rRCM pretraining, then cross-entropy + consistency (eta 0.5) with layer-wise
lr decay; grid lr x consistency weight lbd. Certified accuracy at l2 radius r = share of test
points certified correct with radius >= r (r = 0: correct and not abstained). With n = 500 and
alpha 0.001 the largest certifiable radius is 0.5 * Phi^-1(0.001^(1/500)) ~ 1.1, so r = 1.0 is
barely reachable by design of the budget.
"""

from __future__ import annotations

import copy
import itertools
import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.images import ImageData, load_images
from priorlab.errors import did_you_mean
from priorlab.functional.rrcm import (
    batch_step_indices,
    ema_update,
    karras_sigmas,
    noise_consistency_loss,
    rrcm_pretrain_loss,
)
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, Revision, RunOutput
from priorlab.methods.rrcm import NoiseConditionedEncoder, NoisyClassifier
from priorlab.robust.smoothing import ABSTAIN, certify
from priorlab.seed import seed_everything
from priorlab.train import shuffled_batches

ARMS = ("gaussian", "rrcm")
RADII = (0.0, 0.25, 0.5, 1.0)

# Declared before the revision-3 full run, from a pilot on seed 100 (validation split only): the
# rRCM fine-tune peaks near lr 1.6e-2-3.2e-2 per 256 and lbd 1-2.5 (lbd >= 10 collapses to one
# class at lr >= 1e-3); the Gaussian arm near lr 8e-3-3.2e-2 and training sigma 0.625.
GRIDS = {"gaussian": {"lr": (4e-3, 1e-2, 2.5e-2, 6.4e-2), "train_sigma": (0.375, 0.625, 1.0)},
         "rrcm": {"lr": (4e-3, 1e-2, 2.5e-2, 6.4e-2), "lbd": (0.5, 2.0, 8.0)}}

_COMMON = {"dataset": "digits", "hidden": 256, "proj_dim": 64, "batch_size": 128, "sigma": 0.5,
           "pretrain_lr": 1e-3, "num_scales": 20, "sigma_min": 0.002, "sigma_max": 4.0, "rho": 7.0,
           "tau": 0.2, "ema": 0.99, "jitter": 0.02,
           "copies": 2, "eta": 0.5, "ft_layer_decay": 0.75, "ft_warmup_frac": 0.1, "grids": GRIDS,
           "n0": 50, "alpha": 0.001}

HIGHER = "certified accuracy higher than Gaussian augmentation"
LARGER_RADII = "largest gains at larger radii"

CLAIM = Claim(
    seed_id=27,
    method="rrcm",
    revisions=(
        Revision(2, "fine-tuning follows rrcm_tune.py (AdamW, layer decay, warm-up, cosine); revision 1 "
                    "used Adam 1e-3 without schedule and collapsed to one class at 60 epochs"),
        Revision(3, "fidelity pass (issue 17): both arms get the same fine-tuning budget and recipe and "
                    "a declared 12-point grid (rrcm lr x lbd, gaussian lr x training sigma) chosen by "
                    "validation ACR; one noise level per batch and a symmetric contrastive term as the "
                    "official rrcm_denoiser.py @ 25403e9; clauses, budget, resolution and the "
                    "larger-radii guard declared; declared before rerunning"),
    ),
    statement=("rRCM (contrastive denoising pretraining + consistency fine-tuning) gives higher "
               "randomised-smoothing certified accuracy than Gaussian-augmentation training, "
               "with the largest gains at larger radii."),
    clauses=(HIGHER, LARGER_RADII),
    setting={
        "smoke": "8x8 digits, a few epochs, 20 test points, n = 100; checks the plumbing only.",
        "full": ("scikit-learn 8x8 digits (1,078 train; 359 validation for tuning; the first 200 "
                 "test images), MLP encoder 65-256-256 + linear head; sigma 0.5 in [0, 1] pixels. "
                 "Both arms: 60 epochs of labelled training, batch 128, 2 noisy copies per "
                 "example, AdamW (wd 0) at lr x 128/256 with 6 warm-up epochs then cosine, the "
                 "setting with the best validation ACR out of 12. gaussian: cross-entropy from "
                 "scratch, lr in {4e-3, 1e-2, 2.5e-2, 6.4e-2} x training sigma in {0.375, "
                 "0.625, 1.0}. rrcm: 60 epochs of unlabelled pretraining (20-scale Karras grid "
                 "0.002..4, one level per batch, tau 0.2, symmetric contrastive term, EMA 0.99, "
                 "views = 1-pixel shifts + 0.02 Gaussian jitter, Adam 1e-3), then cross-entropy "
                 "+ consistency (eta 0.5) with layer-wise lr decay 0.75, the same lr grid x lbd "
                 "in {0.5, 2, 8}. CERTIFY with n0 50, n 500, alpha 0.001 (the paper: 100k "
                 "samples)."),
    },
    metric="cert_acc_r050",
    higher_is_better=True,
    arms=ARMS,
    # The paper's average gain over the strongest baselines is ~5 points of certified accuracy;
    # against Gaussian augmentation it is larger. 3 points at r = 0.5 is a conservative bar.
    comparisons=(Comparison("rrcm", "gaussian", "superiority", min_effect=0.03, clause=HIGHER),),
    # The gain at r = 0.5 minus the gain at r = 0 (r = 1.0 is at the edge of what n = 500 can
    # certify): per run, cert_acc_r050 - cert_acc_r000, so the paired difference is the interaction.
    guards=(Guard("cert_acc_r050_minus_r000", higher_is_better=True, kind="superiority",
                  min_effect=0.0, clause=LARGER_RADII),),
    budget=Budget(unit="pretraining epochs", ours=60, paper=12288,
                  note="CIFAR-10 RCM-B: 300k steps at batch 2048 over 50k images; fine-tuning "
                       "60 epochs here, 100 there"),
    tiers={
        "smoke": dict(_COMMON, pretrain_epochs=2, finetune_epochs=3, n_test=20, n=100),
        "full": dict(_COMMON, pretrain_epochs=60, finetune_epochs=60, n_test=200, n=500),
    },
    seeds={"smoke": 2, "full": 5},
    paper_value=("CIFAR-10 / ImageNet certified accuracy above diffusion-based smoothing by 5.3 "
                 "points on average (ImageNet), up to 11.6 at larger radii"),
    curves=("certified_accuracy",),
    extra_metrics=("cert_acc_r000", "cert_acc_r025", "cert_acc_r100", "cert_acc_r050_minus_r000",
                   "acr", "noisy_acc"),
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
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg["pretrain_lr"])
    losses = []
    for _ in range(cfg["pretrain_epochs"]):
        total = 0.0
        for idx in shuffled_batches(len(x_train), cfg["batch_size"], gen):
            x = x_train[idx]
            view_a, view_b = (_shift_views(x, cfg["jitter"], gen) for _ in range(2))
            steps = batch_step_indices(cfg["num_scales"], len(x), gen)
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


def _finetune_optimizer(model: NoisyClassifier, cfg: dict, lr: float, layer_decay: float):
    """rrcm_tune.py's optimiser: AdamW (no weight decay) at ``lr * batch / 256`` (scale_lr),
    layer-wise lr decay (the head at full lr, each layer below one more factor of
    ``layer_decay``; 1.0 = none), linear warm-up then cosine to 0, stepped per epoch."""
    layers = [model.encoder.trunk[0], model.encoder.trunk[2], model.head]
    base_lr = lr * cfg["batch_size"] / 256
    groups = [{"params": list(layer.parameters()),
               "lr": base_lr * layer_decay ** (len(layers) - 1 - depth)}
              for depth, layer in enumerate(layers)]
    opt = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.999), weight_decay=0.0)
    epochs = cfg["finetune_epochs"]
    warmup = max(1, round(cfg["ft_warmup_frac"] * epochs))

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _finetune(model, data, cfg, gen, *, lr: float, lbd: float = 0.0, train_sigma: float | None = None,
              layer_decay: float = 1.0) -> None:
    """Both arms' labelled training: the same optimiser, schedule, epochs and ``copies`` noisy
    copies per example; cross-entropy averaged over the copies, plus the consistency term when
    ``lbd > 0`` (rRCM). ``train_sigma`` (default: the certified sigma) is the augmentation noise."""
    sigma = cfg["sigma"] if train_sigma is None else train_sigma
    opt, schedule = _finetune_optimizer(model, cfg, lr, layer_decay)
    for _ in range(cfg["finetune_epochs"]):
        for idx in shuffled_batches(len(data.y_train), cfg["batch_size"], gen):
            x, y = data.x_train[idx], data.y_train[idx]
            logits = [model(x + sigma * torch.randn(x.shape, generator=gen))
                      for _ in range(cfg["copies"])]
            loss = sum(F.cross_entropy(lg, y) for lg in logits) / len(logits)
            if lbd > 0:
                loss = loss + noise_consistency_loss(logits, lbd, cfg["eta"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        schedule.step()


def _grid_points(grid: dict[str, tuple]) -> list[dict[str, float]]:
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


@torch.no_grad()
def _certified_radii(model, x_all, y_all, cfg, gen) -> torch.Tensor:
    """CERTIFY radius per point, -1 where the smoothed prediction is wrong or abstains."""
    radii = []
    for x, y in zip(x_all, y_all):
        label, radius = certify(model, x, cfg["sigma"], cfg["n0"], cfg["n"], cfg["alpha"],
                                batch=cfg["n"], generator=gen)
        radii.append(radius if label == int(y) and label != ABSTAIN else -1.0)
    return torch.tensor(radii)


def _acr(radii: torch.Tensor) -> float:
    return float(radii.clamp(min=0).mean())


@torch.no_grad()
def _accuracy(model, x, y, sigma: float, gen) -> float:
    noisy = x + sigma * torch.randn(x.shape, generator=gen) if sigma else x
    return float((model(noisy).argmax(1) == y).float().mean())


def _tune(arm: str, template: NoisyClassifier, data: ImageData, cfg: dict, seed: int, gen):
    """Fine-tune one copy of ``template`` per grid point and keep the one with the highest
    validation ACR. Every point starts from the same generator state and is scored on the same
    smoothing noise, so the grid compares settings, not random draws; ties go to the earlier
    point."""
    start = gen.get_state()
    scored = []
    for point in _grid_points(cfg["grids"][arm]):
        gen.set_state(start)
        model = copy.deepcopy(template)
        if arm == "rrcm":
            with torch.no_grad():  # rrcm_tune.py's head: zero bias, trunc-normal weights, std 2e-5
                torch.nn.init.trunc_normal_(model.head.weight, std=2e-5, generator=gen)
                model.head.bias.zero_()
            _finetune(model, data, cfg, gen, lr=point["lr"], lbd=point["lbd"],
                      layer_decay=cfg["ft_layer_decay"])
        else:
            _finetune(model, data, cfg, gen, lr=point["lr"], train_sigma=point["train_sigma"])
        model.eval()
        val_gen = torch.Generator().manual_seed(10_000 + seed)
        score = _acr(_certified_radii(model, data.x_val, data.y_val, cfg, val_gen))
        scored.append((score, point, model))
    best = max(range(len(scored)), key=lambda i: (scored[i][0], -i))
    return scored[best][2], scored[best][1], [(p, s) for s, p, _ in scored]


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm of paper 27 (rRCM)")
    data = _data(cfg["dataset"])
    gen = seed_everything(seed)
    encoder = NoiseConditionedEncoder(data.x_train[0].numel(), cfg["hidden"], cfg["proj_dim"])
    curves = {}
    if arm == "rrcm":
        losses = _pretrain(encoder, data.x_train, cfg, gen)
        curves["pretrain_loss"] = {"x": list(range(1, len(losses) + 1)), "y": losses}
    template = NoisyClassifier(encoder, data.num_classes, cfg["sigma"])
    model, selected, scored = _tune(arm, template, data, cfg, seed, gen)
    grid = cfg["grids"][arm]
    tuning = {name: {"grid": list(values), "selected": selected[name]} for name, values in grid.items()}
    info = {"val_acr_by_setting": [{**p, "val_acr": s} for p, s in scored],
            "val_clean_acc": _accuracy(model, data.x_val, data.y_val, 0.0, gen),
            "val_noisy_acc": _accuracy(model, data.x_val, data.y_val, cfg["sigma"], gen)}
    x_test, y_test = data.x_test[:cfg["n_test"]], data.y_test[:cfg["n_test"]]
    noisy_acc = _accuracy(model, x_test, y_test, cfg["sigma"], gen)
    radii = _certified_radii(model, x_test, y_test, cfg, gen)
    metrics = {f"cert_acc_r{round(r * 100):03d}": float((radii >= r).float().mean()) for r in RADII}
    metrics["cert_acc_r050_minus_r000"] = metrics["cert_acc_r050"] - metrics["cert_acc_r000"]
    metrics["acr"] = _acr(radii)
    metrics["noisy_acc"] = noisy_acc
    radius_grid = [i / 20 for i in range(25)]
    curves["certified_accuracy"] = {"x": radius_grid,
                                    "y": [float((radii >= r).float().mean()) for r in radius_grid]}
    info["max_certifiable_radius"] = float(max(radii.max(), 0.0))
    resolution = {name: 1 / len(y_test) for name in metrics if name.startswith("cert_acc")}
    resolution["noisy_acc"] = 1 / len(y_test)
    return RunOutput(metrics=metrics, curves=curves, info=info, resolution=resolution, tuning=tuning)
