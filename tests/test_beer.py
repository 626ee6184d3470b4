"""BEER (seed 2): known values of the bound and regulariser, zero case, gradients, the agent."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.beer import bellman_cosine_bound, beer_regulariser
from priorlab.reproductions import p002_beer
from priorlab.rl.td3 import AgentConfig, ddpg_config, evaluate, td3_config, train


def _tensors():
    phi = torch.tensor([[1.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    phi_next = torch.tensor([[1.0, 0.0], [4.0, 3.0]], dtype=torch.float64)
    reward = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    weight = torch.tensor([[2.0, 0.0]], dtype=torch.float64)  # |w|^2 = 4
    return phi, phi_next, reward, weight


def test_known_bound_values():
    phi, phi_next, reward, weight = _tensors()
    gamma = 0.5
    bound = bellman_cosine_bound(phi, phi_next, reward, weight, discount=gamma)
    # row 0: (1 + 0.25 - 1/4) / (2 * 0.5 * 1 * 1) = 1;  row 1: (25 + 0.25 * 25) / (2 * 0.5 * 25) = 1.25
    torch.testing.assert_close(bound, torch.tensor([1.0, 1.25], dtype=torch.float64))


def test_known_regulariser_value_with_online_numerator():
    phi, phi_next, reward, weight = _tensors()
    online = torch.zeros_like(phi)  # numerator uses |phi_next_online| = 0
    # row 0: B = (1 - 1/4) / (2 * 0.5) = 0.75, cos = 1 -> 0.25; row 1: B = 25 / 25 = 1, cos = 0.96 -> 0
    value = beer_regulariser(phi, phi_next, reward, weight, beta=2.0, discount=0.5,
                             phi_next_online=online)
    torch.testing.assert_close(value, torch.tensor(2.0 * 0.25 / 2, dtype=torch.float64))


def test_zero_when_cosine_below_bound_and_at_zero_beta():
    torch.manual_seed(0)
    phi, phi_next = torch.rand(16, 8), torch.rand(16, 8)
    weight, reward = torch.randn(1, 8), torch.zeros(16)
    # with r = 0 and gamma = 1 the bound is (|a|^2 + |b|^2) / (2|a||b|) >= 1 >= cos
    assert beer_regulariser(phi, phi_next, reward, weight, discount=1.0) == 0
    big_reward = torch.full((16,), 100.0)
    assert beer_regulariser(phi, phi_next, big_reward, weight) > 0
    assert beer_regulariser(phi, phi_next, big_reward, weight, beta=0.0) == 0


def test_gradient_flows_to_phi_only_and_is_finite():
    torch.manual_seed(0)
    phi = torch.rand(32, 8, requires_grad=True)
    phi_next = torch.rand(32, 8)
    weight = torch.randn(1, 8, requires_grad=True)
    value = beer_regulariser(phi, phi_next, torch.full((32, 1), 50.0), weight)
    value.backward()
    assert value > 0 and torch.isfinite(phi.grad).all() and phi.grad.abs().sum() > 0
    assert weight.grad is None  # the bound is a constant of the step


def test_dead_feature_is_unconstrained():
    phi = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    bound = bellman_cosine_bound(phi, torch.ones(2, 2), torch.ones(2), torch.ones(1, 2))
    assert math.isinf(bound[0]) and math.isfinite(bound[1])
    assert torch.isfinite(beer_regulariser(phi, torch.ones(2, 2), torch.ones(2), torch.ones(1, 2)))


@pytest.mark.parametrize("bad", [
    lambda p, n, r, w: beer_regulariser(p[0], n, r, w),  # 1-D features
    lambda p, n, r, w: beer_regulariser(p, n[:1], r, w),  # batch mismatch
    lambda p, n, r, w: beer_regulariser(p, n, r[:1], w),  # one reward short
    lambda p, n, r, w: beer_regulariser(p, n, r, w[:, :1]),  # head of the wrong width
    lambda p, n, r, w: beer_regulariser(p, n, r, torch.zeros_like(w)),
    lambda p, n, r, w: beer_regulariser(p * float("nan"), n, r, w),
    lambda p, n, r, w: beer_regulariser(p.long(), n, r, w),
    lambda p, n, r, w: beer_regulariser(p, n, r, w, beta=-1.0),
    lambda p, n, r, w: beer_regulariser(p, n, r, w, discount=0.0),
    lambda p, n, r, w: beer_regulariser(p, n, r, w, discount=1.5),
    lambda p, n, r, w: beer_regulariser(p, n, r, w, phi_next_online=n[:, :1]),
])
def test_bad_inputs_raise(bad):
    with pytest.raises(PriorlabError):
        bad(*_tensors())


def test_bad_agent_settings_raise():
    for kwargs in ({"n_critics": 3}, {"hidden": 0}, {"discount": 1.5}, {"beer_beta": -1.0},
                   {"lr": 0.0}):
        with pytest.raises(PriorlabError):
            AgentConfig(**kwargs)
    with pytest.raises(PriorlabError):
        train("CartPole-v1", td3_config(), 10, 0)  # discrete actions
    with pytest.raises(PriorlabError):
        train("Pendulum-v9", td3_config(), 10, 0)


@pytest.mark.parametrize("cfg", [td3_config(start_steps=20, batch_size=16, hidden=16),
                                 ddpg_config(start_steps=20, batch_size=16, hidden=16, beer_beta=1e-3)])
def test_agent_runs_on_pendulum(cfg):
    agent, buffer, history = train("Pendulum-v1", cfg, 220, seed=0)
    assert len(buffer) == 220 and agent.updates == 200
    assert len(history["episode_return"]) == 1  # Pendulum episodes are 200 steps
    result = evaluate(agent, "Pendulum-v1", episodes=1, horizon=20, tail=5)
    assert all(math.isfinite(v) for v in result.values())
    assert result["q_abs_error"] >= abs(result["q_bias"])


def test_beer_arm_differs_from_its_base():
    logs = {}
    for beta in (0.0, 10.0):
        agent, _, _ = train("Pendulum-v1", ddpg_config(start_steps=20, batch_size=16, hidden=16,
                                                       beer_beta=beta), 60, seed=0)
        logs[beta] = torch.cat([p.flatten() for p in agent.critics.parameters()])
    assert not torch.equal(logs[0.0], logs[10.0])


def test_reproduction_rejects_unknown_arm():
    with pytest.raises(PriorlabError, match="did you mean"):
        p002_beer.run("beerr", p002_beer.CLAIM.tiers["smoke"], 0)


@pytest.mark.parametrize("change, name", [
    (dict(reward=torch.tensor([1e20])), "reward"),  # r^2 overflows: the bound was -inf (fuzz)
    (dict(beta=1e30, reward=torch.tensor([1e15])), "beta"),  # the loss itself overflows
])
def test_overflow_raises_instead_of_a_silent_nan(change, name):
    kwargs = dict(phi=torch.tensor([[1.0, 0.0, 0.0, 0.5]]), phi_next=torch.tensor([[0.5, 1.0, 0.0, 0.0]]),
                  reward=torch.tensor([1.0]), head_weight=torch.ones(1, 4))
    kwargs.update(change)
    beta = kwargs.pop("beta", 1e-3)
    with pytest.raises(PriorlabError, match=name):
        beer_regulariser(**kwargs, beta=beta)
