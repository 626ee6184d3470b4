"""Paper card: latent traversals as potential flows (seed 59).

Component: :class:`priorlab.nn.potential_flow.PotentialFlow` (K potentials, ``traverse``,
``wave_residual``, ``losses``), with :class:`~priorlab.nn.potential_flow.PairClassifier` (names
the traversal from a pair) and the linear baseline
:class:`~priorlab.nn.potential_flow.LinearDirections`. No adapter: traversals are learned on a
frozen generator, not inside another model's training loop.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.nn.potential_flow import LinearDirections, PairClassifier, PotentialFlow
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Latent Traversals in Generative Models as Potential Flows",
    authors="Yue Song et al.",
    venue="ICML",
    year=2023,
    arxiv="2304.12944",
    code_url="https://github.com/KingJamesSong/PDETraversal",
    licence="no licence file in the repository",
    seed_id=59,
)

USAGE = """\
import torch
from torch import nn
from priorlab.nn.potential_flow import PairClassifier, PotentialFlow

torch.manual_seed(0)
decoder = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64),
                        nn.Unflatten(1, (1, 8, 8)), nn.Sigmoid())  # any frozen generator
for p in decoder.parameters():
    p.requires_grad_(False)
flow = PotentialFlow(latent_dim=4, num_potentials=3, num_steps=5)
classifier = PairClassifier(3, in_channels=1)
optimizer = torch.optim.Adam([*flow.parameters(), *classifier.parameters()], lr=1e-3)
for step in range(6):
    z, k, start = torch.randn(16, 4), step % 3, step % 4
    latent1, latent2, terms = flow.losses(z, k, start, decoder)
    logits = classifier(decoder(latent1), decoder(latent2))
    loss = (nn.functional.cross_entropy(logits, torch.full((16,), k))
            + terms["initial"] + terms["wave"] - terms["jvp"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
path = flow.traverse(torch.randn(2, 4), k=1, steps=8)  # (9, 2, 4): decode each row to animate
"""


class _ToyGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16))
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, z):
        return self.net(z).view(-1, 1, 4, 4)


class _FlowAndClassifier(nn.Module):
    """The trainable pair on a frozen toy generator; forward returns the total objective's
    parts so ``loss_fn`` can add them (the contract trains it with priorlab.train.fit)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.generator = _ToyGenerator()
        self.flow = PotentialFlow(3, 2, num_steps=3)
        self.classifier = PairClassifier(2, in_channels=1, width=8)

    def forward(self, z):
        k = 1
        latent1, latent2, terms = self.flow.losses(z, k, 0, self.generator)
        logits = self.classifier(self.generator(latent1), self.generator(latent2))
        return logits, terms["initial"] + terms["wave"] - terms["jvp"]


def _loss(output, targets):
    logits, flow = output
    return nn.functional.cross_entropy(logits, targets) + flow


def _example() -> Example:
    generator = torch.Generator().manual_seed(0)
    return Example(
        model_fn=_FlowAndClassifier,
        batch=(torch.randn(8, 3, generator=generator), torch.ones(8, dtype=torch.long)),
        loss_fn=_loss,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=1e-2),
        adapter_fn=None,
        zero_strength=None,  # no strength knob: the flow is the method itself
        baseline=None,
        bad_args=(
            lambda: PotentialFlow(0, 3),
            lambda: PotentialFlow(4, 3, num_steps=1),
            lambda: PotentialFlow(4, 2.5),
            lambda: PotentialFlow(4, 3).traverse(torch.randn(2, 5), 0, 3),
            lambda: PotentialFlow(4, 3).traverse(torch.randn(2, 4), 3, 3),
            lambda: PotentialFlow(4, 3).traverse(torch.full((2, 4), float("nan")), 0, 3),
            lambda: PotentialFlow(4, 3, num_steps=3).losses(torch.randn(2, 4), 0, 2, nn.Identity()),
            lambda: PotentialFlow(4, 3).losses(torch.randn(2, 4), 0, 0, "decoder"),
            lambda: PairClassifier(1),
            lambda: PairClassifier(3)(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)),
            lambda: LinearDirections(4, 3, step_size=0.0),
        ),
    )


CARD = register(MethodCard(
    id="pde-traversal",
    name="Latent traversals as potential flows (PDETraversal)",
    family="R: representations, self-supervision, structure",
    kind="module",
    paper=PAPER,
    summary=("Each of K traversals moves a latent code down a learned, time-varying potential: "
             "z <- z + grad_z u_k(z, t). Each u_k is an MLP of (z, t) trained towards the wave "
             "equation u_tt = c_k^2 Laplacian u (residual at the rollout's points, start at rest), "
             "with a reward for changing the decoded image, while a classifier that sees the images "
             "of two consecutive steps must name k, which makes the K flows distinct."),
    usage=USAGE,
    hyperparameters=(
        "num_potentials K (official: 16 for MNIST, more for GANs); num_steps, the training rollout "
        "(official num_support_timesteps = 10, of which half, 5, are rolled out); hidden width of "
        "each potential MLP (official: the latent size); wave speeds c_k learned from 1. Training "
        "(official): Adam lr 1e-4 for potentials and classifier, batch 256 (VAE) / 32 (GANs), 10,000 "
        "(VAE) to 100,000 iterations, lambda_cls = lambda_pde = 1; loss = CE + initial + wave - jvp; "
        "start step drawn from 0..num_steps-2 per batch; the pair reflected through z half the time. "
        "For StyleGAN2 the official code drops the output tanh of the potential."),
    deviations=(
        "Laplacian: exact trace of the Hessian; the official code uses the Hessian's row sums "
        "(grad of sum(grad u)), which is not the Laplacian the paper's wave equation states. "
        "Wave residual: evaluated at the rollout's points detached (PINN collocation points); the "
        "official code also differentiates it through the earlier steps that placed the points, "
        "which costs a third-order backward pass on CPU. Classifier: a small CNN on the channel-"
        "concatenated pair with K logits (a latent-pair MLP too); the official VAE scripts use a "
        "conv encoder with a reparametrised latent read as logits, the GAN scripts a ResNet18 or "
        "LeNet (with a magnitude head the loss does not use); ours keeps a 4x4 pooled map so it can "
        "see where the image changed. The potential MLP follows the official layout (width "
        "defaults to the latent size); the time embedding has an even width of at least 4. The "
        "reproduction uses width 32 on its 6-d latent (the official latents are 324-d), Adam 3e-3 "
        "and 600 steps instead of 1e-4 and 10,000, to fit a CPU budget."),
    claim_scope=(
        "The paper claims (ICML 2023) more disentangled traversals than linear directions (Voynov & "
        "Babenko) and WarpedGANSpace, qualitatively and by its metrics, in pre-trained VAE latent "
        "spaces (MNIST, dSprites) and GAN latent spaces (SNGAN, BigGAN, StyleGAN2), and better "
        "likelihood when the flows regularise VAE training. Here: a small VAE trained on procedural "
        "dSprites-like shapes, K = 6 flows vs K learned linear directions and PCA directions, "
        "disentanglement as factor-change purity measured with the shapes' known factors; no GANs, "
        "no regulariser variant, 600 training steps of batch 32 instead of 10,000 of batch 256."),
    component=PotentialFlow,
    adapter=None,
    example=_example,
    reproduction="p059_pde_traversal",
    tags=("latent-traversal", "disentanglement", "pde", "generative-models"),
))
