"""Random-teacher self-distillation (seed 5): a frozen teacher copy as a training-loop adapter."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.distill import _check_temperature, distillation_loss
from priorlab.hooks import Adapter, StepContext
from priorlab.nn.dino_head import DinoHead, DinoModel
from priorlab.registry import Example, MethodCard, Paper, register


class RandomTeacher(Adapter):
    """Adds ``{"distill": weight * distillation_loss(student(x), teacher(x), tau_s, tau_t)}``.

    Holds a frozen copy of ``teacher`` (never updated, run in eval mode, no gradients), the
    ``no_update`` teacher of the official code. The student is the model being trained; pass a
    task loss of zero (``lambda out, y: out.sum() * 0``) for pure self-distillation.
    """

    def __init__(self, teacher: nn.Module, tau_s: float = 1.0, tau_t: float = 1.0,
                 weight: float = 1.0):
        if not isinstance(teacher, nn.Module):
            raise PriorlabError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        self.tau_s = _check_temperature("tau_s", tau_s)
        self.tau_t = _check_temperature("tau_t", tau_t)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight < 0:
            raise PriorlabError(f"weight must be a finite number >= 0, got {weight!r}")
        self.weight = float(weight)
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)

    def loss_terms(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target = self.teacher(ctx.inputs)
        return {"distill": self.weight * distillation_loss(ctx.outputs, target, self.tau_s,
                                                           self.tau_t)}

    def state_dict(self) -> dict:
        return {"teacher": copy.deepcopy(self.teacher.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "teacher" not in state:
            raise PriorlabError("RandomTeacher state must be a dict with a 'teacher' entry, as "
                                "RandomTeacher.state_dict() returns")
        self.teacher.load_state_dict(state["teacher"])


def neighbourhood_init(student: nn.Module, teacher: nn.Module, eps: float,
                       variance_preserving: bool = False) -> nn.Module:
    """Move ``student`` (freshly initialised) to ``teacher + eps * student``.

    The official ``s_init='neighborhood'`` (``configuration.py``, ``init_student_teacher``): a
    student near the teacher, at a distance set by ``eps``. ``variance_preserving=True`` divides
    by ``sqrt(1 + eps^2)`` (the official ``--s_init_var_preserving``, off by default there).
    Works in place on every parameter and returns ``student``.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps < 0:
        raise PriorlabError(f"eps must be a finite number >= 0, got {eps!r}")
    if not isinstance(variance_preserving, bool):
        raise PriorlabError(f"variance_preserving must be True or False, got {variance_preserving!r}")
    s_params, t_params = list(student.parameters()), list(teacher.parameters())
    if len(s_params) != len(t_params) or any(a.shape != b.shape for a, b in zip(s_params, t_params)):
        raise PriorlabError("student and teacher must have the same architecture for a "
                            "neighbourhood initialisation")
    scale = 1 / math.sqrt(1 + eps ** 2) if variance_preserving else 1.0
    with torch.no_grad():
        for p_s, p_t in zip(s_params, t_params):
            p_s.copy_((p_t + eps * p_s) * scale)
    return student


USAGE = """\
import torch
from priorlab.functional.distill import distillation_loss
from priorlab.nn.dino_head import DinoHead, DinoModel

torch.manual_seed(0)
x = torch.rand(128, 64)                                  # unlabelled inputs, no augmentation
def make():
    encoder = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    return DinoModel(encoder, DinoHead(32, 256, hidden_dims=(64,), bottleneck_dim=16))
teacher, student = make().requires_grad_(False), make()  # teacher: random and frozen
opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.0)
for step in range(20):
    xb = x[torch.randint(0, 128, (32,))]
    loss = distillation_loss(student(xb), teacher(xb), tau_s=1.0, tau_t=1.0)
    opt.zero_grad(); loss.backward(); opt.step()
features = student.embed(x)                              # probe these (encoder output)
# in priorlab.train.fit: adapters=[priorlab.methods.random_teacher.RandomTeacher(teacher)],
# loss_fn=lambda out, y: out.sum() * 0
"""


def _tiny_model(seed: int) -> DinoModel:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
    return DinoModel(encoder, DinoHead(16, 3, hidden_dims=(16,), bottleneck_dim=8))


def _example() -> Example:
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))

    def adam(params):
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)

    # the teacher is a second random draw of the same architecture, frozen by the adapter
    return Example(
        model_fn=lambda: _tiny_model(0), batch=batch, loss_fn=F.cross_entropy, optimizer_fn=adam,
        adapter_fn=lambda: RandomTeacher(_tiny_model(1)),
        zero_strength=(adam, lambda: RandomTeacher(_tiny_model(1), weight=0.0), F.cross_entropy),
        baseline=(adam, None, F.cross_entropy),
        bad_args=(lambda: RandomTeacher(_tiny_model(1), tau_s=0.0),
                  lambda: RandomTeacher(_tiny_model(1), weight=-1.0),
                  lambda: RandomTeacher("not a module"),
                  lambda: distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4)),
                  lambda: distillation_loss(torch.full((2, 3), float("nan")), torch.zeros(2, 3)),
                  lambda: neighbourhood_init(_tiny_model(0), _tiny_model(1), eps=-0.1),
                  lambda: DinoHead(16, 3, init="xavier")),
    )


register(MethodCard(
    id="random-teacher",
    name="Random-teacher self-distillation",
    family="N: noisy labels, distillation, robustness",
    kind="adapter",
    paper=Paper(
        title="Random Teachers are Good Teachers",
        authors="Felix Sarnthein et al.", venue="ICML", year=2023, arxiv="2302.12091",
        code_url="https://github.com/safelix/dinopl", licence="not stated (no licence file seen)",
        seed_id=5),
    summary=("A student (encoder + DINO head) is trained to match a frozen, randomly initialised "
             "teacher of the same architecture on the same un-augmented input, minimising "
             "H(softmax(t/tau_t), softmax(s/tau_s)); the student's encoder features become "
             "more linearly decodable than the teacher's, without labels or augmentation."),
    usage=USAGE,
    hyperparameters=("Official random-teacher run (README: configs/cifar10_distillation_v2.json "
                     "@0e0a5e7f over the configuration.py defaults @2fbaf231): tau_s = tau_t = 1, "
                     "no centering, teacher never updated and in eval mode, one un-augmented 32x32 "
                     "view, AdamW lr 1e-3, weight decay 0, no gradient clipping, batch 256, "
                     "n_epochs 100 (the default, not overridden). DINO head: hidden (2048, 2048) "
                     "GELU, l2 bottleneck 256, out_dim 65536, every head Linear initialised "
                     "trunc-normal std 0.02 with zero bias (--head_init_method default "
                     "'trunc_normal'). Student and teacher drawn independently (the paper's "
                     "protocol, s_init='random'; the code's default is 'teacher'); the near-teacher "
                     "start is s_init='neighborhood': teacher + eps * fresh, with the "
                     "variance-preserving division by sqrt(1 + eps^2) off by default "
                     "(--s_init_var_preserving False). The gain grows with training length; "
                     "out_dim and head width matter little."),
    deviations=("Follows the official code at these commits: head init (DinoHead(init="
                "'trunc_normal')) = configuration.py @2fbaf231 and core.py @d56e80a1, values as "
                "modules/linear.py @fe8f1b59 (std 0.02, truncation at the absolute +-2 of "
                "modules/init.py @d021c267, i.e. effectively none); last layer without weight "
                "normalisation (weight_norm_last=False) = l2bottleneck.py @e8c392bd with "
                "linear.py @fe8f1b59, whose Linear.forward ignores the normalised weight it is "
                "passed (older l2bottleneck.py @04338666 did normalise, and there initialised "
                "the bottleneck uniformly); neighbourhood start without the variance-preserving "
                "correction = configuration.py @2fbaf231. Scaled down for CPU: MLP encoder "
                "784-256-256 on Fashion-MNIST instead of ResNet18/VGG11 on CIFAR; head hidden "
                "(256, 256), bottleneck 64, out_dim 1024 (official 2048x2 / 256 / 65536); "
                "batch 128 with lr 1e-3 x 128/256 (the linear scaling the official help text "
                "states; core.py @d56e80a1 has it commented out, identical at batch 256); "
                "10 epochs over 4,000 images (~320 steps) instead of 100 CIFAR epochs; "
                "near-init eps 0.1 (official default 0, the paper sweeps it); probe = L-BFGS "
                "logistic regression on standardised features instead of an SGD-trained linear "
                "layer (official LinearAnalysis, 10 epochs)."),
    claim_scope=("Paper: ResNet18 / VGG11 on CIFAR-10/100, STL-10, TinyImageNet; the student's "
                 "probe accuracy is well above its random teacher's; distilling on Gaussian-noise "
                 "inputs gives little gain; initialising the "
                 "student near the teacher amplifies the gain. Here: a 2-layer MLP encoder on "
                 "a Fashion-MNIST subset, a short CPU budget; we test the direction of each "
                 "effect, not the CIFAR numbers."),
    component=distillation_loss,
    adapter=RandomTeacher,
    example=_example,
    reproduction="p005_random_teacher",
    tags=("self-distillation", "representation learning", "implicit regularisation"),
))
