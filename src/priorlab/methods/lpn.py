"""Paper card: Learned Proximal Networks (seed 28).

Components: :class:`priorlab.nn.lpn.LearnedProximalNetwork` (``prox``, ``prior_value``), the
loss :func:`priorlab.functional.proximal_matching.proximal_matching_loss` with
:func:`~priorlab.functional.proximal_matching.annealed_gamma`; adapter
:class:`priorlab.nn.lpn.ClipWeights` (keeps the potential convex inside ``priorlab.train.fit``).
"""

from __future__ import annotations

import torch

from priorlab.functional.proximal_matching import annealed_gamma, proximal_matching_loss
from priorlab.nn.lpn import ICNN, ClipWeights, LearnedProximalNetwork
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="What's in a Prior? Learned Proximal Networks for Inverse Problems",
    authors="Zhenghan Fang et al.",
    venue="ICLR",
    year=2024,
    arxiv="2310.14344",
    code_url="https://github.com/ZhenghanFang/learned-proximal-networks",
    licence="no licence file in the official repository",
    seed_id=28,
)

USAGE = """\
import torch
from priorlab.nn.lpn import LearnedProximalNetwork
from priorlab.functional.proximal_matching import proximal_matching_loss, annealed_gamma

torch.manual_seed(0)
lpn = LearnedProximalNetwork(dim=1, hidden=16, layers=2, beta=10.0)  # f = grad of a convex psi
optimizer = torch.optim.Adam(lpn.parameters(), lr=1e-3)
steps = 40
for step in range(steps):
    x = torch.distributions.Laplace(0.0, 1.0).sample((256, 1))  # clean signals
    y = x + torch.randn_like(x)                                  # noisy observations
    gamma = annealed_gamma(step, steps, gamma_max=0.5, gamma_min=0.1, num_stages=4)
    loss = proximal_matching_loss(lpn(y), x, gamma)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    lpn.clip_weights()  # keep psi convex: z-path weights >= 0
with torch.no_grad():
    denoised = lpn.prox(torch.linspace(-3, 3, 7).unsqueeze(1))  # the learned prox
prior = lpn.prior_value(torch.tensor([[0.0], [0.5]]), steps=50)  # phi(x), up to a constant
"""


def _tiny_model() -> LearnedProximalNetwork:
    torch.manual_seed(0)
    return LearnedProximalNetwork(2, hidden=8, layers=2, alpha=0.1)


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, generator=generator)
    return x + 0.3 * torch.randn(32, 2, generator=generator), x


def _example() -> Example:
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=lambda prediction, target: proximal_matching_loss(prediction, target, 1.0),
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=1e-2),
        adapter_fn=ClipWeights,
        zero_strength=None,  # no strength knob: the method is the architecture and the loss
        baseline=None,
        bad_args=(
            lambda: ICNN(0),
            lambda: ICNN(2, beta=0.0),
            lambda: ICNN(2, alpha=-1.0),
            lambda: LearnedProximalNetwork(2).prox(torch.zeros(3, 5)),
            lambda: LearnedProximalNetwork(2).prox(torch.full((3, 2), float("nan"))),
            lambda: LearnedProximalNetwork(2).prior_value(torch.zeros(3, 2), steps=0),
            lambda: proximal_matching_loss(torch.zeros(3, 2), torch.zeros(3, 2), gamma=0.0),
            lambda: proximal_matching_loss(torch.zeros(3, 2), torch.zeros(2, 2), gamma=1.0),
            lambda: annealed_gamma(0, 10, gamma_max=0.1, gamma_min=0.5, num_stages=2),
            lambda: ClipWeights().setup(torch.nn.Linear(2, 2), None),
        ),
    )


CARD = register(MethodCard(
    id="lpn",
    name="Learned Proximal Networks (LPN)",
    family="F: neural fields, inverse problems, solvers",
    kind="module",
    paper=PAPER,
    summary=("A denoiser f = grad psi with psi an input-convex network is exactly the proximal "
             "operator of some prior phi; trained with the proximal-matching loss "
             "1 - exp(-||f(y) - x||^2 / gamma^2) (gamma annealed to 0) it approaches the MAP "
             "denoiser prox_{-sigma^2 log p}. phi's value is read off by inverting f: "
             "phi(x) = <y, x> - ||x||^2 / 2 - psi(y) with f(y) = x."),
    usage=USAGE,
    hyperparameters=(
        "ICNN: hidden width and number of hidden layers (official 1-D toy: 50 x 4), softplus "
        "sharpness beta (10 on the toy), alpha >= 0 weight of alpha ||x||^2 / 2 in psi (strong "
        "convexity, makes f injective; 0 in the official 1-D toy, small positive for images). "
        "Loss: gamma annealed in stages from large to small (toy notebook 0.5 -> 0.1; image "
        "trainer gamma_min * 2^(stages - 1 - stage)), after an L1 warm start. Clip the z-path "
        "weights after every step (clip_weights() or the ClipWeights adapter). Inversion for "
        "prior_value: Adam on psi(y) - <x, y>, official 2000 steps at lr 1e-2."),
    deviations=(
        "Fully connected ICNN only (the official image LPNs are convolutional). The strongly "
        "convex term is written alpha ||x||^2 / 2 (official code: alpha ||x||^2, so our alpha "
        "is twice theirs). As in the official code every z-path weight after the first layer "
        "(output included) is clamped >= 0 after each step. Biases: our first layer has one "
        "(official: none) and the final linear x-term has none (official: one, a constant that "
        "changes neither f nor phi). "
        "annealed_gamma spaces stages geometrically between gamma_max and gamma_min (the toy "
        "notebook uses a hand list 0.5, 0.4, 0.3, 0.2, 0.1; the trainer halves per stage). The "
        "loss sums squares over non-batch dims as in the paper (mean_over_dims=True gives the "
        "later official per-pixel variant). In the reproduction, lr follows one cosine decay "
        "instead of the notebook's hand-set drops, and runs are ~7x shorter."),
    claim_scope=(
        "The paper shows on a 1-D Laplacian toy that PM-trained LPNs recover soft-thresholding "
        "and the prior |x| while L2/L1 training do not, and uses LPNs as convergent PnP priors "
        "for deblurring (CelebA), sparse-view CT and compressed sensing, with priors evaluated "
        "on MNIST. Here: the Laplacian toy with all three losses and the prior read off by "
        "inversion; the PnP deblurring clause is untested."),
    component=LearnedProximalNetwork,
    adapter=ClipWeights,
    example=_example,
    reproduction="p028_lpn",
    tags=("inverse-problems", "proximal-operator", "input-convex", "plug-and-play"),
))
