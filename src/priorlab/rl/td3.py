"""A compact TD3 / DDPG agent for gymnasium continuous control, CleanRL style, with BEER.

- TD3: Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in Actor-Critic
  Methods", ICML 2018, arXiv:1802.09477 (twin critics with the minimum in the target, target
  policy smoothing, delayed actor updates).
- The base agent of BEER's official code (sweetice/BEER-ICLR2024, ``BEER.py``) is the DDPG-style
  special case: one critic, no smoothing, the actor updated every step (:func:`ddpg_config`).
- BEER (:mod:`priorlab.functional.beer`) is added to every critic's loss when ``beer_beta > 0``.

Defaults are the official ones (TD3 and BEER alike): 256-256 ReLU networks, Adam 3e-4, batch
256, gamma 0.99, tau 0.005, exploration noise 0.1, 25k random start steps. Each critic exposes
its penultimate representation ``phi(s, a)`` (``Critic.forward`` returns ``(q, phi)``).
:func:`evaluate` returns the episode return and the Q estimate's error against discounted
Monte-Carlo returns of the same rollouts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.beer import beer_regulariser
from priorlab.progress import progress
from priorlab.validation import check_number


@dataclass(frozen=True)
class AgentConfig:
    hidden: int = 256
    lr: float = 3e-4
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.005
    n_critics: int = 2  # 2: TD3's clipped double Q; 1: DDPG (BEER's base agent)
    policy_delay: int = 2  # actor and target updates every this many critic updates
    target_noise: float = 0.2  # target policy smoothing (std, in units of max_action); 0 = off
    noise_clip: float = 0.5
    expl_noise: float = 0.1
    start_steps: int = 25_000  # uniformly random actions before learning starts
    buffer_size: int = 1_000_000
    beer_beta: float = 0.0  # BEER strength; 0 = plain agent (official BEER: 1e-3)

    def __post_init__(self):
        who = "AgentConfig"
        for name in ("hidden", "batch_size", "n_critics", "policy_delay", "buffer_size"):
            check_number(getattr(self, name), name, who=who, low=1, integer=True)
        if self.n_critics > 2:
            raise PriorlabError(f"{who}: n_critics must be 1 (DDPG) or 2 (TD3), got {self.n_critics}")
        check_number(self.start_steps, "start_steps", who=who, low=0, integer=True)
        check_number(self.lr, "lr", who=who, low=0, low_open=True)
        check_number(self.discount, "discount", who=who, low=0, high=1, low_open=True)
        check_number(self.tau, "tau", who=who, low=0, high=1, low_open=True)
        for name in ("target_noise", "noise_clip", "expl_noise", "beer_beta"):
            check_number(getattr(self, name), name, who=who, low=0)


def td3_config(**overrides) -> AgentConfig:
    """TD3 with its official defaults."""
    return AgentConfig(**overrides)


def ddpg_config(**overrides) -> AgentConfig:
    """The base agent of BEER's official code: one critic, no smoothing, no delay."""
    return replace(AgentConfig(n_critics=1, policy_delay=1, target_noise=0.0), **overrides)


def _mlp(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())


class Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int, max_action: float):
        super().__init__()
        self.body = _mlp(obs_dim, hidden)
        self.head = nn.Linear(hidden, act_dim)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.head(self.body(obs)))


class Critic(nn.Module):
    """``Q(s, a) = <phi(s, a), w> + b``; forward returns ``(q of shape (batch, 1), phi)``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.body = _mlp(obs_dim + act_dim, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.body(torch.cat([obs, act], 1))
        return self.head(phi), phi


class ReplayBuffer:
    """A ring buffer of transitions; ``terminated`` (not time-limit truncation) stops bootstraps."""

    def __init__(self, obs_dim: int, act_dim: int, size: int):
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.act = np.zeros((size, act_dim), np.float32)
        self.reward = np.zeros((size, 1), np.float32)
        self.not_done = np.zeros((size, 1), np.float32)
        self.size, self.ptr, self.full = size, 0, False

    def __len__(self) -> int:
        return self.size if self.full else self.ptr

    def add(self, obs, act, reward, next_obs, terminated: bool) -> None:
        i = self.ptr
        self.obs[i], self.act[i], self.reward[i] = obs, act, reward
        self.next_obs[i], self.not_done[i] = next_obs, 0.0 if terminated else 1.0
        self.ptr = (i + 1) % self.size
        self.full = self.full or self.ptr == 0

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, len(self), batch)
        return tuple(torch.from_numpy(a[idx]) for a in
                     (self.obs, self.act, self.reward, self.next_obs, self.not_done))


class Agent:
    """Actor, critics, their targets and optimisers; :meth:`update` is one gradient step."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: float, cfg: AgentConfig):
        self.cfg, self.max_action = cfg, max_action
        self.actor = Actor(obs_dim, act_dim, cfg.hidden, max_action)
        self.critics = nn.ModuleList(Critic(obs_dim, act_dim, cfg.hidden) for _ in range(cfg.n_critics))
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critics_target = copy.deepcopy(self.critics).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=cfg.lr)
        self.updates = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()

    @torch.no_grad()
    def q_value(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The first critic's estimate (the one the actor maximises), shape (batch,)."""
        return self.critics[0](obs, act)[0].squeeze(1)

    def update(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        cfg = self.cfg
        obs, act, reward, next_obs, not_done = batch
        with torch.no_grad():
            next_act = self.actor_target(next_obs)
            if cfg.target_noise > 0:
                noise = (torch.randn_like(next_act) * cfg.target_noise * self.max_action)
                noise = noise.clamp(-cfg.noise_clip * self.max_action, cfg.noise_clip * self.max_action)
                next_act = (next_act + noise).clamp(-self.max_action, self.max_action)
            target_out = [critic(next_obs, next_act) for critic in self.critics_target]
            next_q = torch.min(torch.cat([q for q, _ in target_out], 1), 1, keepdim=True).values
            target = reward + not_done * cfg.discount * next_q
            # official BEER: the bound's numerator uses the online critic at (s', pi(s'))
            online_next_act = self.actor(next_obs) if cfg.beer_beta > 0 else None
        td_loss, beer_loss = torch.zeros(()), torch.zeros(())
        for critic, (_, phi_next) in zip(self.critics, target_out):
            q, phi = critic(obs, act)
            td_loss = td_loss + F.mse_loss(q, target)
            if cfg.beer_beta > 0:
                with torch.no_grad():
                    phi_next_online = critic(next_obs, online_next_act)[1]
                beer_loss = beer_loss + beer_regulariser(
                    phi, phi_next, reward, critic.head.weight, beta=cfg.beer_beta,
                    discount=cfg.discount, phi_next_online=phi_next_online)
        self.critic_opt.zero_grad()
        (td_loss + beer_loss).backward()
        self.critic_opt.step()
        self.updates += 1
        logs = {"td_loss": float(td_loss.detach()), "beer_loss": float(beer_loss.detach())}
        if self.updates % cfg.policy_delay == 0:
            actor_loss = -self.critics[0](obs, self.actor(obs))[0].mean()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            with torch.no_grad():
                for net, target_net in ((self.critics, self.critics_target),
                                        (self.actor, self.actor_target)):
                    for p, tp in zip(net.parameters(), target_net.parameters()):
                        tp.lerp_(p, cfg.tau)
            logs["actor_loss"] = float(actor_loss.detach())
        return logs


def make_env(env_id: str, seed: int, max_episode_steps: int | None = None) -> gym.Env:
    try:
        env = gym.make(env_id, max_episode_steps=max_episode_steps)
    except gym.error.Error as error:
        raise PriorlabError(f"unknown or unavailable gymnasium environment {env_id!r}: {error}") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise PriorlabError(f"{env_id} has a discrete action space; TD3/DDPG need continuous actions")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def train(env_id: str, cfg: AgentConfig, total_steps: int, seed: int, *,
          eval_every: int = 0, eval_fn=None) -> tuple[Agent, ReplayBuffer, dict[str, list[float]]]:
    """Collect ``total_steps`` environment steps, one update per step after ``start_steps``.

    ``eval_fn(agent, step)`` (a dict of floats) runs every ``eval_every`` steps when given;
    the returned history holds its values and the training episode returns.
    """
    total_steps = check_number(total_steps, "total_steps", who="train", low=1, integer=True)
    torch.manual_seed(seed)
    env = make_env(env_id, seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    max_action = float(env.action_space.high[0])
    agent = Agent(obs_dim, act_dim, max_action, cfg)
    buffer = ReplayBuffer(obs_dim, act_dim, min(cfg.buffer_size, total_steps))
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {"episode_return": [], "episode_end_step": []}
    obs, _ = env.reset(seed=seed)
    episode_return = 0.0
    for step in progress(range(total_steps), desc=f"{env_id} seed {seed}"):
        if step < cfg.start_steps:
            action = env.action_space.sample()
        else:
            noise = rng.normal(0.0, max_action * cfg.expl_noise, size=act_dim)
            action = (agent.act(obs) + noise).clip(-max_action, max_action).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        obs, episode_return = next_obs, episode_return + float(reward)
        if terminated or truncated:
            history["episode_return"].append(episode_return)
            history["episode_end_step"].append(step + 1)
            obs, _ = env.reset()
            episode_return = 0.0
        if step >= cfg.start_steps:
            agent.update(buffer.sample(cfg.batch_size, rng))
        if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
            for key, value in eval_fn(agent, step + 1).items():
                history.setdefault(key, []).append(value)
    env.close()
    return agent, buffer, history


@torch.no_grad()
def evaluate(agent: Agent, env_id: str, *, episodes: int = 10, seed: int = 10_000,
             horizon: int | None = None, tail: int = 0) -> dict[str, float]:
    """Deterministic-policy return and Q error against discounted Monte-Carlo returns.

    Each episode runs ``horizon + tail`` steps (``horizon`` defaults to the environment's limit);
    ``return`` sums the first ``horizon`` rewards (the usual score). For every state of those
    first ``horizon`` steps the discounted Monte-Carlo return uses the rewards to the end of the
    rollout, so a ``tail`` of a few hundred steps makes the truncation error negligible
    (gamma^tail). ``q_bias`` = mean(Q - G) (positive: overestimation), ``q_abs_error`` =
    mean |Q - G|, over states before termination.
    """
    episodes = check_number(episodes, "episodes", who="evaluate", low=1, integer=True)
    limit = horizon or gym.spec(env_id).max_episode_steps
    if not limit:
        raise PriorlabError(f"evaluate: {env_id} has no episode limit; pass horizon=")
    env = make_env(env_id, seed, max_episode_steps=limit + tail)
    gamma = agent.cfg.discount
    returns, errors = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        states, actions, rewards = [], [], []
        done = False
        while not done:
            action = agent.act(obs)
            states.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
            done = terminated or truncated
        discounted = np.zeros(len(rewards))
        running = 0.0
        for t in range(len(rewards) - 1, -1, -1):
            running = rewards[t] + gamma * running
            discounted[t] = running
        scored = min(limit, len(rewards))
        returns.append(sum(rewards[:limit]))
        q = agent.q_value(torch.as_tensor(np.array(states[:scored]), dtype=torch.float32),
                          torch.as_tensor(np.array(actions[:scored]), dtype=torch.float32))
        errors.append(q.numpy() - discounted[:scored])
    env.close()
    errors = np.concatenate(errors)
    return {"return": float(np.mean(returns)), "q_bias": float(errors.mean()),
            "q_abs_error": float(np.abs(errors).mean())}
