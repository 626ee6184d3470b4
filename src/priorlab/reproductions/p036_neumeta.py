"""Paper 36, NeuMeta: one weight INR gives networks of unseen widths that stay close in accuracy
to networks trained at those widths, and far above pruning a trained network to them.

Fashion-MNIST (average-pooled to 14x14, as an MLP's input; inputs scaled to [-1, 1] as the
official transform does), classified by MLPs 196 -> w -> w -> 10. Three arms per seed:

- ``neumeta``: train the full-width network (w = 32; Adam 1e-3, batch 128, the official
  pretraining recipe), reorder its hidden units along shortest Hamiltonian paths
  (:func:`~priorlab.nn.neumeta.smooth_permutation`), then train one :class:`NeuMeta` INR: per
  batch a width is drawn from the *training widths* 8, 12, ..., 32, that network's weights are
  generated (coordinate noise 1.0), and the loss is cross-entropy + 1e-4 sum ||w||_2 + the
  magnitude-weighted reconstruction of the permuted pretrained weights when the full width is
  drawn (its weight decays linearly to 0 over the first quarter of training, official 50 of 200
  epochs). AdamW 1e-3, EMA 0.995 of the INR, evaluated without noise.
- ``individual``: a network trained from scratch at each evaluated width, the same recipe as
  the full-width network (the paper's upper reference).
- ``pruned``: the full-width network pruned to each width by the L1 norm of each hidden unit's
  incoming weights (magnitude, structured, no fine-tuning: the official pruning baseline).

The metric is the mean test accuracy (official 10k test set) over the evaluated widths 10, 18
and 26 (69%, 44% and 19% fewer hidden units), none of which is a training width of the INR.
Nothing is tuned: every arm uses the official fixed settings, so no arm selects on the
validation split.

Deviations from the official Fashion-MNIST run, all for the CPU budget unless said: an MLP on
14x14 images instead of LeNet on 28x28; INR hidden 64 x 3 layers with 6 frequencies instead of
256 x 8 with 16; 2,000 INR steps instead of 200 epochs; 4 pretraining epochs instead of 10;
training widths every 4th width (official: every width 8..32) so that the evaluated widths are
unseen; the final EMA INR is evaluated (official: the best epoch on the test loader), with one
noiseless sample (official also reports an average of noisy samples).
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.images import load_images
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, RunOutput, Untested
from priorlab.nn.neumeta import (
    MorphableMLP,
    NeuMeta,
    sample_width,
    smooth_permutation,
    total_variation,
    training_widths,
    weighted_regression_loss,
)
from priorlab.seed import seed_everything
from priorlab.train import accuracy, shuffled_batches

ARMS = ("neumeta", "individual", "pruned")

_COMMON = {"depth": 2, "batch_size": 128, "lr": 1e-3, "coordinate_noise": 1.0,
           "reg_weight": 1e-4, "recon_weight": 1.0, "recon_decay_fraction": 0.25,
           "ema_decay": 0.995, "inr_lr": 1e-3, "inr_residual_scale": 0.1}

CLAIM = Claim(
    seed_id=36,
    method="neumeta",
    statement=("One NeuMeta INR, trained on a few sampled widths of a network family, emits "
               "networks of widths never sampled in training whose accuracy is close to that of "
               "networks trained individually at those widths, and better than pruning the "
               "trained full-width network to them."),
    setting={
        "smoke": ("sklearn digits 8x8, MLP 64 -> w -> w -> 10, full width 8, training widths 4, "
                  "6, 8, evaluated at 5 and 7; a few epochs and INR steps; checks the pipeline."),
        "full": ("Fashion-MNIST (50k train, official 10k test), images average-pooled to 14x14; "
                 "MLP 196 -> w -> w -> 10. Full width 32 pretrained 4 epochs (Adam 1e-3, batch "
                 "128; official: 10 epochs). INR: one residual MLP per parameter tensor, hidden "
                 "64, 3 layers, 6 frequencies (official 256, 8, 16), 2,000 steps of batch 128 "
                 "(~5 epochs; official 200 epochs), training widths 8, 12, ..., 32, coordinate "
                 "noise 1.0, EMA 0.995. Evaluated at widths 10, 18, 26 (all unseen); "
                 "individual networks at those widths get the pretraining recipe; pruning keeps "
                 "the units with the largest L1 incoming weights, no fine-tuning."),
    },
    metric="unseen_acc",
    higher_is_better=True,
    arms=ARMS,
    comparisons=(
        # margin 0.02: "close to individually trained" read as within two points of accuracy on
        # a ~85% task (the abstract: NeuMeta "sustains full-size performance"); a larger gap
        # would make training a network per width the clearly better choice.
        Comparison(method="neumeta", baseline="individual", kind="non-inferiority", margin=0.02,
                   clause="networks of unseen widths keep accuracy close to individually "
                          "trained networks of those widths"),
        # min_effect 0.01: one point, the smallest gain that makes generating weights worth it
        # over the free alternative of pruning the network one already has.
        Comparison(method="neumeta", baseline="pruned", kind="superiority", min_effect=0.01,
                   clause="networks of unseen widths beat magnitude pruning of the full network "
                          "(no fine-tuning)"),
    ),
    clauses=(
        "networks of unseen widths keep accuracy close to individually trained networks of "
        "those widths",
        "networks of unseen widths beat magnitude pruning of the full network (no fine-tuning)",
        "full-size performance is sustained at 75% compression on CIFAR/ImageNet ResNets",
        "the same holds for semantic segmentation (U-Net, VOC) and image generation (VAE)",
        "permutation smoothing and coordinate noise each improve the generated networks",
    ),
    untested=(
        Untested("full-size performance is sustained at 75% compression on CIFAR/ImageNet "
                 "ResNets",
                 "CPU budget: ResNet-20/56 on CIFAR and ResNet-18 on ImageNet are out of reach; a "
                 "14x14 Fashion-MNIST MLP stands in"),
        Untested("the same holds for semantic segmentation (U-Net, VOC) and image generation "
                 "(VAE)",
                 "no VOC or CelebA data offline and no CPU budget for those networks"),
        Untested("permutation smoothing and coordinate noise each improve the generated networks",
                 "the ablations need one more INR training per seed and setting, beyond the "
                 "6-minute full tier"),
    ),
    budget=Budget("INR training steps", ours=2000, paper=93800,
                  note="official Fashion-MNIST LeNet config: 200 epochs of 469 batches of 128 on "
                       "a GPU; ours ~5 epochs on CPU, so a negative result is inconclusive"),
    tiers={
        "smoke": {**_COMMON, "dataset": "digits", "pool": 1, "full_width": 8, "train_low": 4,
                  "train_step": 2, "eval_widths": [5, 7], "epochs": 2, "inr_steps": 12,
                  "inr_hidden": 8, "inr_layers": 2, "inr_freqs": 2, "batch_size": 64},
        "full": {**_COMMON, "dataset": "fashion-mnist", "pool": 2, "full_width": 32,
                 "train_low": 8, "train_step": 4, "eval_widths": [10, 18, 26],
                 "epochs": 4, "inr_steps": 2000, "inr_hidden": 64, "inr_layers": 3,
                 "inr_freqs": 6},
    },
    seeds={"smoke": 2, "full": 3},
    paper_value=("abstract: full-size performance sustained at 75% compression; the paper's "
                 "Fashion-MNIST/MNIST per-width numbers (a plot) were not retrievable here."),
    curves=("acc_vs_width", "inr_loss"),
    extra_metrics=("full_acc",),
)


@lru_cache(maxsize=2)
def _data(dataset: str, pool: int):
    data = load_images(dataset, split_seed=0)

    def prep(x):
        if pool > 1:
            x = F.avg_pool2d(x, pool)
        return (x.flatten(1) - 0.5) / 0.5

    return prep(data.x_train), data.y_train, prep(data.x_test), data.y_test, data.num_classes


def _train_network(family: MorphableMLP, width: int, cfg: dict, seed: int, x, y):
    seed_everything(seed)
    model = family.build(width)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    order = torch.Generator().manual_seed(seed)
    for _ in range(cfg["epochs"]):
        for idx in shuffled_batches(len(y), cfg["batch_size"], order):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def prune_to_width(family: MorphableMLP, model, width: int) -> torch.nn.Module:
    """Keep, in every hidden layer, the ``width`` units whose incoming weights have the largest
    L1 norm (structured magnitude pruning, no fine-tuning), in their original order."""
    params = [p.detach() for p in model.parameters()]  # 2-D weights, as the layers hold them
    kept, previous = [], None
    for layer in range(family.depth):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        keep = weight.abs().sum(1).topk(width).indices.sort().values
        if previous is not None:
            weight = weight[:, previous]
        kept += [weight[keep], bias[keep]]
        previous = keep
    kept += [params[-2][:, previous], params[-1]]
    return family.build(width, [p.reshape(s) for p, s in zip(kept, family.shapes(width))])


class _EMA:
    """Exponential moving average of the INR's parameters (the official EMA, decay 0.995)."""

    def __init__(self, model, decay: float):
        self.model, self.decay = model, decay
        self.shadow = copy.deepcopy(model).eval()

    @torch.no_grad()
    def update(self):
        for s, p in zip(self.shadow.parameters(), self.model.parameters()):
            s.lerp_(p, 1 - self.decay)


def _train_inr(family, target, cfg, seed, x, y):
    widths = training_widths(cfg["train_low"], cfg["full_width"], cfg["train_step"])
    target_params = [p.detach() for p in family.parameters_of(target)]
    seed_everything(seed)
    inr = NeuMeta(family.num_tensors, hidden=cfg["inr_hidden"], num_layers=cfg["inr_layers"],
                  num_freqs=cfg["inr_freqs"], residual_scale=cfg["inr_residual_scale"],
                  norm=cfg["full_width"], kernel_sizes=family.kernel_sizes)
    optimizer = torch.optim.AdamW(inr.parameters(), lr=cfg["inr_lr"], weight_decay=0.0)
    ema = _EMA(inr, cfg["ema_decay"])
    gen = torch.Generator().manual_seed(seed)
    steps, decay_steps = cfg["inr_steps"], max(1, int(cfg["recon_decay_fraction"] * cfg["inr_steps"]))
    losses, step = [], 0
    while step < steps:
        for idx in shuffled_batches(len(y), cfg["batch_size"], gen):
            if step == steps:
                break
            width = sample_width(widths, gen)
            params = inr(family.shapes(width), coordinate_noise=cfg["coordinate_noise"],
                         generator=gen)
            loss = F.cross_entropy(family.forward(x[idx], params), y[idx])
            loss = loss + cfg["reg_weight"] * sum(p.norm() for p in params)
            recon_weight = cfg["recon_weight"] * max(0.0, 1 - step / decay_steps)
            if width == cfg["full_width"] and recon_weight > 0:
                loss = loss + recon_weight * weighted_regression_loss(params, target_params)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ema.update()
            losses.append(float(loss.detach()))
            step += 1
    return ema.shadow, losses


def _generated(family, inr, width):
    with torch.no_grad():
        return family.build(width, inr(family.shapes(width))).eval()


def _as_image(weight: torch.Tensor, scale: float) -> list[list[float]]:
    return ((weight / (2 * scale) + 0.5).clamp(0, 1)).tolist()


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    x, y, x_test, y_test, num_classes = _data(cfg["dataset"], cfg["pool"])
    family = MorphableMLP(x.shape[1], num_classes, depth=cfg["depth"])
    full, evals = cfg["full_width"], list(cfg["eval_widths"])
    sweep = training_widths(cfg["train_low"], full)  # every width in range, for the curve
    curves, info = {}, {"training_widths": training_widths(cfg["train_low"], full,
                                                           cfg["train_step"])}
    if arm == "individual":
        nets = {w: _train_network(family, w, cfg, seed, x, y) for w in sorted({*evals, full})}
        acc = {w: accuracy(net, x_test, y_test) for w, net in nets.items()}
        curve_widths = sorted(acc)
    else:
        base = _train_network(family, full, cfg, seed, x, y)
        if arm == "pruned":
            acc = {w: accuracy(prune_to_width(family, base, w), x_test, y_test) for w in sweep}
        else:
            smooth = smooth_permutation(base)
            info["tv_before"] = total_variation(family.parameters_of(base))
            info["tv_after"] = total_variation(family.parameters_of(smooth))
            info["permuted_acc"] = accuracy(smooth, x_test, y_test)
            inr, losses = _train_inr(family, smooth, cfg, seed, x, y)
            acc = {w: accuracy(_generated(family, inr, w), x_test, y_test) for w in sweep}
            every = max(1, len(losses) // 100)
            curves["inr_loss"] = {"x": [float(i) for i in range(0, len(losses), every)],
                                  "y": losses[::every]}
            if seed == 0:
                target_w2 = family.parameters_of(smooth)[2].detach()
                scale = float(target_w2.abs().max())
                info["smoothed_w2_image"] = _as_image(target_w2, scale)
                info["generated_w2_image"] = _as_image(
                    family.parameters_of(_generated(family, inr, full))[2].detach(), scale)
        curve_widths = sweep
        info["full_width_pretrained_acc"] = accuracy(base, x_test, y_test)
    curves["acc_vs_width"] = {"x": [float(w) for w in curve_widths],
                              "y": [acc[w] for w in curve_widths]}
    metrics = {"unseen_acc": sum(acc[w] for w in evals) / len(evals), "full_acc": acc[full]}
    info["acc_by_width"] = {str(w): acc[w] for w in evals}
    return RunOutput(metrics=metrics, curves=curves, info=info,
                     resolution={"unseen_acc": 1 / len(y_test), "full_acc": 1 / len(y_test)})
