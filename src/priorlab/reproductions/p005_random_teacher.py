"""Paper 5, random teachers: a student distilled from a frozen random teacher probes better.

A teacher (MLP encoder + DINO head) is drawn at random and frozen; a student of the same
architecture (a fresh random draw, or the teacher plus a small perturbation) minimises
``distillation_loss(student(x), teacher(x), tau_s=1, tau_t=1)`` on un-augmented training images
(the official ``cifar10_distillation_v2`` settings: AdamW, lr 1e-3 x batch/256, no weight
decay, no centering; the head as the official ``DINOHead`` defaults: trunc-normal std 0.02
init, zero biases, no effective weight normalisation of the last layer). The metric is the test
accuracy of a linear probe (L-BFGS logistic regression on standardised features) fitted on
labelled training images' encoder features; a cosine k-NN accuracy (k=20) is recorded beside it.

Arms: ``raw`` (probe the pixels), ``teacher`` (the random teacher's encoder), ``student``
(after distillation), ``noise_student`` (distilled on Gaussian-noise inputs instead of images),
``near_init_student`` (student initialised at teacher + eps * fresh, the official
``s_init='neighborhood'`` without the optional variance-preserving correction).
The teacher of one seed is the same network in every arm, so the comparisons are paired.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.data.images import load_images
from priorlab.diagnostics.probe import linear_probe
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Revision, RunOutput, Untested
from priorlab.methods.random_teacher import RandomTeacher, neighbourhood_init
from priorlab.nn.dino_head import DinoHead, DinoModel
from priorlab.seed import seed_everything
from priorlab.train import fit

ARMS = ("raw", "teacher", "student", "noise_student", "near_init_student")
TRAINED = {"student": "random", "noise_student": "random", "near_init_student": "neighbourhood"}

# head_init / last_weight_norm / var_preserving: the official defaults (see the method card)
_COMMON = {"tau_s": 1.0, "tau_t": 1.0, "lr": 1e-3, "batch_size": 128, "eps": 0.1, "knn_k": 20,
           "probe_l2": 1e-3, "head_init": "trunc_normal", "last_weight_norm": False,
           "var_preserving": False}

_BEATS_TEACHER = "a student distilled from a frozen random teacher probes clearly better than it"
_DATA_DEPENDENT = "the gain depends on the data: distilling on random inputs loses it"
_NEAR_INIT = "feature learning is amplified when the student starts near the teacher"
_TRANSFER = "the student's representations transfer between tasks"
_LOTTERY = ("the student checkpoint holds sparse subnetworks (lottery tickets) and lies on the "
            "border of linear basins of the supervised loss landscape")

CLAIM = Claim(
    seed_id=5,
    method="random-teacher",
    statement=("A student distilled from a frozen random teacher (same view, no augmentation, "
               "no labels) has clearly better linear-probe accuracy than its teacher; the gain "
               "depends on the data (distilling on random inputs loses it), the representations "
               "transfer between tasks, the student holds lottery tickets at the border of "
               "linear basins, and the gain grows when the student starts near the teacher."),
    setting={
        "smoke": ("scikit-learn digits (1,078 train for distillation and probing, 360 test), "
                  "MLP encoder 64-64-64, head (64,) -> 32 -> 256, 2 epochs; checks the plumbing."),
        "full": ("Fashion-MNIST: 4,000 unlabelled training images for distillation, a linear "
                 "probe fitted on 2,000 labelled training images and tested on 2,000 test "
                 "images; MLP encoder 784-256-256 (ReLU), DINO head hidden (256, 256) GELU, "
                 "l2 bottleneck 64, out_dim 1024, head Linears trunc-normal std 0.02 with zero "
                 "bias, last layer not weight-normalised (both the official defaults), "
                 "tau_s = tau_t = 1, no centering, AdamW lr 1e-3 x 128/256, batch 128, no weight "
                 "decay, 10 epochs (~320 steps); near-init student = teacher + 0.1 * fresh "
                 "(no variance-preserving correction, the official default). Changed from the "
                 "paper (ResNet18/VGG11 on CIFAR, head 2048x2 -> 256 -> 65536, 100 epochs by "
                 "the official default) to fit a CPU budget."),
    },
    metric="probe_acc",
    higher_is_better=True,
    arms=ARMS,
    # The paper's student gains are tens of points on CIFAR; on Fashion-MNIST a random MLP
    # already probes well, so 1 point is the bar for "clearly better". The three effects we can
    # test all enter the verdict: the headline (student vs teacher), data dependence
    # (image-trained student vs noise-trained student) and the local amplification (near-init
    # student vs random-init student, any positive gain).
    comparisons=(Comparison("student", "teacher", "superiority", min_effect=0.01,
                            clause=_BEATS_TEACHER),
                 Comparison("student", "noise_student", "superiority", min_effect=0.01,
                            clause=_DATA_DEPENDENT),
                 Comparison("near_init_student", "student", "superiority", min_effect=0.0,
                            clause=_NEAR_INIT)),
    clauses=(_BEATS_TEACHER, _DATA_DEPENDENT, _TRANSFER, _LOTTERY, _NEAR_INIT),
    untested=(Untested(_TRANSFER, "needs a second labelled task to probe on; one dataset here"),
              Untested(_LOTTERY, "needs iterative magnitude pruning and supervised fine-tuning "
                                 "runs with interpolation, far beyond the CPU budget")),
    budget=Budget(unit="epochs", ours=10, paper=100,
                  note=("official dino.py default --n_epochs 100, not overridden by "
                        "configs/cifar10_distillation_v2.json; ours: 10 epochs over 4,000 "
                        "Fashion-MNIST images (~320 steps) vs 100 CIFAR-10 epochs (~19,500 steps)")),
    revisions=(Revision(2, "fidelity pass (issue 17): head init trunc-normal std 0.02 with zero "
                           "bias, last layer without weight normalisation, near-init without the "
                           "variance-preserving correction, as the official dinopl defaults; "
                           "clauses, budget and resolution declared; declared before rerunning"),),
    tiers={
        "smoke": dict(dataset="digits", n_distill=None, n_probe=None, n_test=None,
                      encoder=[64, 64], head_hidden=[64], bottleneck=32, out_dim=256, epochs=2,
                      eval_every=1, **_COMMON),
        "full": dict(dataset="fashion-mnist", n_distill=4000, n_probe=2000, n_test=2000,
                     encoder=[256, 256], head_hidden=[256, 256], bottleneck=64, out_dim=1024,
                     epochs=10, eval_every=5, **_COMMON),
    },
    seeds={"smoke": 2, "full": 5},
    paper_value=("Linear-probe accuracy of the student well above the random teacher's on "
                 "CIFAR-10/100, STL-10 and TinyImageNet (paper, Table 1)"),
    curves=("probe_acc", "distill_loss"),
    extra_metrics=("knn_acc",),
)


@lru_cache(maxsize=2)
def _data(name: str, n_distill, n_probe, n_test):
    data = load_images(name, n_test=n_test, split_seed=0)
    x = data.x_train.flatten(1)
    mean, std = x.mean(), x.std()  # the official code standardises the inputs

    def prep(t):
        return (t.flatten(1) - mean) / std

    n_distill = n_distill or len(x)
    n_probe = n_probe or len(x)
    return {"distill": prep(data.x_train[:n_distill]), "probe_x": prep(data.x_train[:n_probe]),
                "probe_y": data.y_train[:n_probe], "test_x": prep(data.x_test), "test_y": data.y_test}


def _model(in_dim: int, cfg: dict) -> DinoModel:
    layers: list[nn.Module] = []
    prev = in_dim
    for width in cfg["encoder"]:
        layers += [nn.Linear(prev, width), nn.ReLU()]
        prev = width
    return DinoModel(nn.Sequential(*layers),
                     DinoHead(prev, cfg["out_dim"], cfg["head_hidden"], cfg["bottleneck"],
                              init=cfg["head_init"], weight_norm_last=cfg["last_weight_norm"]))


def _knn_accuracy(train_f, train_y, test_f, test_y, k: int) -> float:
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    neighbours = (test_f @ train_f.T).topk(k, dim=1).indices
    votes = F.one_hot(train_y[neighbours], int(train_y.max()) + 1).sum(1)
    return float((votes.argmax(1) == test_y).float().mean())


def _scores(features, d, cfg) -> dict[str, float]:
    train_f, test_f = features(d["probe_x"]), features(d["test_x"])
    return {"probe_acc": linear_probe(train_f, d["probe_y"], test_f, d["test_y"],
                                      l2=cfg["probe_l2"]),
            "knn_acc": _knn_accuracy(train_f, d["probe_y"], test_f, d["test_y"], cfg["knn_k"])}


def _resolution(d) -> dict[str, float]:
    step = 1 / len(d["test_y"])  # one test image
    return {"probe_acc": step, "knn_acc": step}


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm of paper 5 (random teacher)")
    d = _data(cfg["dataset"], cfg["n_distill"], cfg["n_probe"], cfg["n_test"])
    gen = seed_everything(seed)
    in_dim = d["distill"].shape[1]
    teacher = _model(in_dim, cfg).eval().requires_grad_(False)
    if arm == "raw":
        return RunOutput(metrics=_scores(lambda x: x, d, cfg), resolution=_resolution(d))
    if arm == "teacher":
        with torch.no_grad():
            return RunOutput(metrics=_scores(teacher.embed, d, cfg), resolution=_resolution(d))

    student = _model(in_dim, cfg)  # a second, independent random draw
    if TRAINED[arm] == "neighbourhood":
        neighbourhood_init(student, teacher, cfg["eps"], cfg["var_preserving"])
    inputs = d["distill"]
    if arm == "noise_student":
        inputs = torch.randn(inputs.shape, generator=gen)  # same size, no image structure
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg["lr"] * cfg["batch_size"] / 256,
                                  weight_decay=0.0)

    def batches():
        order = torch.randperm(len(inputs), generator=gen)
        for start in range(0, len(order), cfg["batch_size"]):
            xb = inputs[order[start:start + cfg["batch_size"]]]
            yield xb, xb  # no labels: the teacher's outputs are the targets

    def evaluate(model):
        return _scores(model.embed, d, cfg)

    history = fit(student, batches, optimizer, lambda out, _: out.sum() * 0,
                  epochs=cfg["epochs"], adapters=[RandomTeacher(teacher, cfg["tau_s"],
                                                                cfg["tau_t"])],
                  evaluate=evaluate, eval_every=cfg["eval_every"])
    epochs = [float(e) for e in history["epoch"]]
    metrics = {"probe_acc": history["probe_acc"][-1], "knn_acc": history["knn_acc"][-1],
               "distill_loss": history["loss/distill"][-1]}
    curves = {"probe_acc": {"x": epochs, "y": history["probe_acc"]},
              "distill_loss": {"x": [float(e + 1) for e in range(cfg["epochs"])],
                               "y": history["loss/distill"]}}
    return RunOutput(metrics=metrics, curves=curves, resolution=_resolution(d),
                     info={"steps": cfg["epochs"] * -(-len(inputs) // cfg["batch_size"])})
