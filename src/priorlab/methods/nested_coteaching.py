"""Paper cards (seed 41): nested dropout (a module) and nested Co-teaching (two networks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.functional.coteaching import coteaching_loss
from priorlab.nn.nested_dropout import NestedDropout
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Compressing Features for Learning with Noisy Labels",
    authors="Yingyi Chen et al.", venue="IEEE TNNLS", year=2022, arxiv="2206.13140",
    code_url="https://github.com/yingyichen-cyy/Nested-Co-teaching", licence="MIT", seed_id=41)

FAMILY = "N: noisy labels, distillation, robustness"

CLAIM_SCOPE = ("Paper: ResNet-18/50 (ImageNet-pretrained) on Clothing1M (real noise, ~38%): "
               "Nested + Co-teaching 74.9% vs CE 67.2%, Co-teaching 69.2%, Dropout 72.8%, Nested "
               "73.1%; VGG-19 on ANIMAL-10N 84.1% vs 79.4% (CE); also CIFAR-10/100 with "
               "synthetic noise. The paper's Co-teaching number is not a run of the authors' "
               "code: it is quoted from an earlier paper (it matches the 69.21 in the Clothing1M "
               "table of Wei et al., JoCoR, CVPR 2020). Our Co-teaching baseline is trained "
               "here, from scratch with the whole stage-one schedule of the other arms (the "
               "fairer baseline). Here: an MLP on Fashion-MNIST with 40% symmetric and 40% "
               "class-dependent noise, all five arms, the official CIFAR stage lengths in "
               "epochs (stage one at 2/3 for the CPU budget, fine-tuning in full); we test the "
               "ordering (the combination beats each other arm; nested alone beats CE), not the "
               "Clothing1M numbers.")

NESTED_USAGE = """\
import torch
import torch.nn.functional as F
from torch import nn
from priorlab.nn.nested_dropout import NestedDropout, best_truncation, logits_at_every_truncation

torch.manual_seed(0)
x, y = torch.randn(128, 20), torch.randint(0, 4, (128,))           # y: (noisy) labels
x_val, y_val = torch.randn(64, 20), torch.randint(0, 4, (64,))     # clean validation set
body = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU())
nested, head = NestedDropout(32, sigma=10.0), nn.Linear(32, 4, bias=False)
model = nn.Sequential(body, nested, head)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
for step in range(20):                  # each step keeps the first m ~ p(m) channels
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
model.eval()
with torch.no_grad():                   # pick the number of channels on validation data
    kept, acc = best_truncation(logits_at_every_truncation(body(x_val), head), y_val)
nested.eval_channels = kept             # the compressed model used at test time
"""

COTEACHING_USAGE = """\
import torch
import torch.nn.functional as F
from torch import nn
from priorlab.functional.coteaching import coteaching_loss, forget_rate_schedule

torch.manual_seed(0)
x, y = torch.randn(256, 20), torch.randint(0, 4, (256,))     # y: noisy labels
nets = [nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4)) for _ in range(2)]
opt = torch.optim.SGD([p for n in nets for p in n.parameters()], lr=0.05, momentum=0.9)
noise_rate, epochs = 0.3, 4
for epoch in range(epochs):
    rate = forget_rate_schedule(epoch, forget_rate=noise_rate, num_gradual=2)
    for idx in torch.randperm(256).split(64):
        loss1, loss2 = coteaching_loss(nets[0](x[idx]), nets[1](x[idx]), y[idx], rate)
        opt.zero_grad(); (loss1 + loss2).backward(); opt.step()
# predict with the average of both networks' logits
"""


def _nested_example() -> Example:
    def model_fn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), NestedDropout(8, sigma=4.0, seed=0),
                             nn.Linear(8, 3, bias=False))

    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))

    def sgd(params):
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    return Example(
        model_fn=model_fn, batch=batch, loss_fn=F.cross_entropy, optimizer_fn=sgd,
        bad_args=(lambda: NestedDropout(0),
                  lambda: NestedDropout(8, sigma=0.0),
                  lambda: NestedDropout(8, sigma=float("nan")),
                  lambda: NestedDropout(8, eval_channels=9),
                  lambda: NestedDropout(8)(torch.zeros(2, 7))),
    )


register(MethodCard(
    id="nested-dropout",
    name="Nested dropout (feature compression)",
    family=FAMILY,
    kind="module",
    paper=PAPER,
    summary=("A layer on the feature that, in training, keeps only the first m channels with "
             "p(m) ∝ exp(-(m/sigma)^2) and zeroes the rest, so the feature is ordered by "
             "importance and effectively compressed; at test time the number of channels is "
             "chosen on clean validation data. The compression makes memorising noisy labels "
             "harder."),
    usage=NESTED_USAGE,
    hyperparameters=("sigma (official --nested): 10 for CIFAR-10, 100 for CIFAR-100, Clothing1M "
                     "and ANIMAL-10N (512- or 2048-d ResNet features); mu=0. One m per batch, no "
                     "rescaling of the kept channels, placed between the pooled feature and a "
                     "bias-free linear classifier. Official optimiser (CIFAR): SGD lr 0.1, "
                     "momentum 0.9, weight decay 5e-4, batch 320, 350 epochs (lr x0.1 at 200 and "
                     "300) after 6,000 warm-up iterations. Smaller sigma = stronger compression."),
    deviations=("Optional per_sample=True (one m per sample, as Rippel et al.) and an own "
                "seeded generator saved in the state_dict (exact resumption); the official code "
                "draws one m per batch from NumPy's global generator. K is chosen by "
                "best_truncation (ties to the fewest channels; the official code subtracts "
                "1e-5 * K before the argmax, which is the same unless accuracies differ by less "
                "than 1e-5)."),
    claim_scope=CLAIM_SCOPE,
    component=NestedDropout,
    example=_nested_example,
    reproduction="p041_nested_coteaching",
    tags=("noisy labels", "dropout", "compression"),
))

register(MethodCard(
    id="nested-coteaching",
    name="Nested Co-teaching (compressed features + Co-teaching)",
    family=FAMILY,
    kind="system",
    paper=PAPER,
    summary=("Two networks with nested-dropout features are trained separately, then fine-tuned "
             "with Co-teaching: each ranks a batch by cross-entropy, keeps the (1 - forget "
             "rate) smallest-loss share, and its peer learns only from those samples. "
             "coteaching_loss(logits1, logits2, targets, forget_rate) is the exchange step; "
             "forget_rate_schedule ramps the rate up linearly (Han et al., 2018)."),
    usage=COTEACHING_USAGE,
    hyperparameters=("forget rate: the noise rate (Han et al.), 0.2-0.3 in the official commands; "
                     "num_gradual 10 (Han et al., 200 epochs), 5 of 30 (official, from scratch), "
                     "0 when fine-tuning nested networks; fine-tuning lr 1/10-1/100 of stage "
                     "one (CIFAR 1e-3 for 100 epochs, lr x0.1 at 50; Clothing1M 2e-3 for 30), "
                     "batch norm frozen; stage one on CIFAR: 6,000 warm-up iterations (~43 "
                     "epochs) then 350 epochs; K for the selection pass is the last validated "
                     "one; the pair predicts with the mean of both networks' logits."),
    deviations=("coteaching_loss follows Han et al. (both networks rank the same batch from the "
                "training forward pass). The reproduction follows the official stage-two loop "
                "instead (yingyichen-cyy/Nested-Co-teaching @4c9b59f, co_teaching_resnet/"
                "train.py, main.py), built from small_loss_indices: each network ranks its own "
                "half of the batch in eval mode at the last validated K and the peer trains on "
                "the kept samples; each network draws its own nested truncation (the official "
                "code draws one for both). Forget-rate indexing: epoch t uses rateSchedule[t-1] "
                "as Nested-Co-teaching (first epoch forgets nothing), not Han et al.'s loop "
                "(bhanML/Co-teaching main.py @07a0f57 trains from index 1, so its first epoch "
                "already forgets forget_rate/(num_gradual-1)); forget_rate_schedule takes the "
                "index, so either is available. Loss: the plain mean over the kept samples, as "
                "Nested-Co-teaching's loss.py; Han et al.'s loss.py (@f1dcdf6, lines 26-29) "
                "divides the mean by the kept count again, which under their Adam is nearly a "
                "no-op but under SGD (used here and by Nested-Co-teaching) would only shrink "
                "the effective lr by the kept count (~40-100x), so we do not copy it. "
                "Stage lengths follow the official CIFAR commands (nested/run_cifar.sh, "
                "co_teaching_resnet/run_cifar.sh @d0abedf) in epochs: warm-up (6,000 "
                "iterations ~ 43 epochs, plain cross-entropy, no checkpoint) then 350 epochs, "
                "and 100 fine-tuning epochs; the full tier runs stage one at 2/3 of its official length "
                "for the CPU budget (declared as a Budget). Symmetric noise flips to another "
                "class only, per class, as data/preprocess_sym_noise_cifar.py "
                "(data.noise.symmetric_flip_noise). The forget rate is the measured noise rate "
                "(Han et al.); the CIFAR commands fix it at 0.2. The num_remembered count floors "
                "(1 - rate) * N with a 1e-9 tolerance against float rounding."),
    claim_scope=CLAIM_SCOPE,
    component=coteaching_loss,
    reproduction="p041_nested_coteaching",
    tags=("noisy labels", "co-teaching", "two networks"),
))
