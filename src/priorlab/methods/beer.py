"""Paper card: BEER, the Bellman-equation rank regulariser (seed 2).

Component: :func:`priorlab.functional.beer.beer_regulariser` (the bound alone:
:func:`priorlab.functional.beer.bellman_cosine_bound`). The agent that uses it lives in
:mod:`priorlab.rl.td3` (``beer_beta > 0``). No adapter: the term needs the critic's features of
consecutive state-action pairs, which only an RL update has, so it is called there directly.
"""

from __future__ import annotations

from priorlab.functional.beer import beer_regulariser
from priorlab.registry import MethodCard, Paper, register

PAPER = Paper(
    title="Adaptive Regularization of Representation Rank as an Implicit Constraint of Bellman "
          "Equation",
    authors="Qiang He et al.",
    venue="ICLR",
    year=2024,
    arxiv="2404.12754",
    code_url="https://github.com/sweetice/BEER-ICLR2024",
    licence="no licence file in the official repository",
    seed_id=2,
)

USAGE = """\
import copy
import torch
from torch import nn
from priorlab.functional.beer import beer_regulariser

torch.manual_seed(0)
body = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())  # phi(s, a)
head = nn.Linear(32, 1)                                                          # Q = <phi, w> + b
target_body, target_head = copy.deepcopy(body), copy.deepcopy(head)             # target critic
optimizer = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=3e-4)
sa, next_sa = torch.randn(64, 5), torch.randn(64, 5)  # (s, a) and (s', pi(s')) concatenated
reward = torch.randn(64, 1)
for step in range(5):
    phi = body(sa)
    with torch.no_grad():
        phi_next = target_body(next_sa)               # the target critic's phi(s', a')
        target_q = reward + 0.99 * target_head(phi_next)
    td_loss = nn.functional.mse_loss(head(phi), target_q)
    loss = td_loss + beer_regulariser(phi, phi_next, reward, head.weight, beta=1e-3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# A full agent: priorlab.rl.td3.train("Pendulum-v1", ddpg_config(beer_beta=1e-3), steps, seed);
# official code also passes phi_next_online=phi(s', pi(s')) of the online critic for the bound.
"""

CARD = register(MethodCard(
    id="beer",
    name="BEER (Bellman Equation-based automatic rank Regulariser)",
    family="R: representations, self-supervision, structure",
    kind="function",
    paper=PAPER,
    summary=("The Bellman equation Q(s,a) = r + gamma Q(s',a') with Q = <phi, w> implies "
             "cos(phi(s,a), phi(s',a')) <= B = (|phi|^2 + gamma^2 |phi'|^2 - r^2/|w|^2) / "
             "(2 gamma |phi| |phi'|). BEER adds beta * mean ReLU(cos - B) to the critic loss: "
             "consecutive representations may be as similar (low rank) as the Bellman equation "
             "allows, no more, so the rank is regulated adaptively rather than maximised."),
    usage=USAGE,
    hyperparameters=(
        "beta: strength, official 1e-3; the gap cos - B grows large when r^2/|w|^2 dwarfs the "
        "feature norms (early training, large rewards), but its gradient is beta times a "
        "cosine's. discount: the gamma of the bound, official 0.99. The "
        "official base agent (sweetice/BEER-ICLR2024, BEER.py) is DDPG-like: one critic, no "
        "target smoothing, actor updated every step, 256-256 ReLU networks, Adam 3e-4, batch "
        "256, tau 0.005, exploration noise 0.1, 25k random steps, 1M environment steps "
        "(priorlab.rl.td3.ddpg_config(beer_beta=1e-3))."),
    deviations=(
        "The component follows BEER.train: cosine between the online phi(s,a) and the target "
        "critic's phi(s',pi_target(s')), bound without gradient, its numerator with the online "
        "critic's phi(s',pi(s')) and its denominator with the target's, terminal transitions "
        "unmasked. Differences: gamma in the bound is the discount argument (the official code "
        "hard-codes 0.99, the same value); a pair with an all-zero feature gets B = inf (no "
        "constraint) where the official code divides by zero; an all-zero head weight is an "
        "error. In the agent, TD3 twin critics each get their own BEER term (the official "
        "agent has one critic). The reproduction uses smaller networks and budgets (its "
        "setting says which)."),
    claim_scope=(
        "The paper claims that BEER, added to a deterministic policy-gradient agent, beats the "
        "baselines (TD3 among them; rank-maximising ones such as InFeR and DR3 (?)) by a "
        "large margin on 12 DeepMind Control tasks "
        "over 1M steps, estimates Q-values more accurately (smaller error against Monte-Carlo "
        "returns), and keeps the representation rank at a moderate level. Here: gymnasium "
        "Pendulum-v1 with small networks and a short budget, BEER vs its own base agent and "
        "vs TD3; DMC tasks, long budgets and the rank-maximising baselines are not run."),
    component=beer_regulariser,
    adapter=None,
    # The regulariser needs the features of consecutive state-action pairs and the critic's
    # head, which the registry's supervised training contract cannot provide; its gradient,
    # zero case and bad inputs are tested in tests/test_beer.py.
    example=None,
    reproduction="p002_beer",
    tags=("reinforcement-learning", "representation-rank", "regularisation"),
))
