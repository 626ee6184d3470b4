"""Potential-flow traversals (seed 59): the step rule, the wave residual, the losses, the baselines."""

import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.nn.potential_flow import LinearDirections, PairClassifier, PotentialFlow
from priorlab.registry import get
from priorlab.reproductions import p059_pde_traversal


def _flow(dim=3, K=2, steps=4):
    torch.manual_seed(0)
    return PotentialFlow(dim, K, num_steps=steps).double()


def test_traverse_takes_gradient_steps_of_the_potential():
    flow = _flow()
    z = torch.randn(5, 3, dtype=torch.float64)
    path = flow.traverse(z, 1, 3, start=2)
    assert path.shape == (4, 5, 3) and torch.equal(path[0], z)
    for step in range(3):
        point = path[step].clone().requires_grad_()
        u = flow.potential(point, 2.0 + step, 1)
        (grad,) = torch.autograd.grad(u.sum(), point)
        torch.testing.assert_close(path[step + 1], path[step] + grad)
    back = flow.traverse(z, 1, 1, backward=True)
    torch.testing.assert_close(back[1], z - flow.velocity(z, 0.0, 1))
    assert not path.requires_grad


def test_zero_steps_is_identity_and_potentials_are_distinct():
    flow = _flow()
    z = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(flow.traverse(z, 0, 0)[0], z)
    assert not torch.allclose(flow.traverse(z, 0, 2)[-1], flow.traverse(z, 1, 2)[-1])


def test_wave_residual_matches_a_hand_computed_laplacian():
    flow = _flow(dim=2, K=1)
    z = torch.randn(3, 2, dtype=torch.float64)
    t = 1.5
    residual = flow.wave_residual(z, t, 0)
    # finite differences of u in t and in each z coordinate
    h = 1e-4

    def u(zz, tt):
        return flow.potential(zz, tt, 0).detach()

    u_tt = (u(z, t + h) - 2 * u(z, t) + u(z, t - h)) / h ** 2
    lap = sum((u(z + h * e, t) - 2 * u(z, t) + u(z - h * e, t)) / h ** 2
              for e in torch.eye(2, dtype=torch.float64))
    expected = ((u_tt - float(flow.wave_speed[0].detach()) ** 2 * lap) ** 2).mean()
    assert float(residual.detach()) == pytest.approx(float(expected), rel=1e-3, abs=1e-9)
    # differentiable in the wave speed and in the potential's parameters
    residual.backward()
    assert flow.wave_speed.grad[0] != 0 and flow.potentials[0].space.weight.grad.abs().sum() > 0


def test_losses_pair_is_two_consecutive_steps_and_gradients_are_finite():
    flow = _flow(dim=3, K=2, steps=4)
    decoder = nn.Sequential(nn.Linear(3, 8), nn.Tanh()).double()
    z = torch.randn(6, 3, dtype=torch.float64)
    latent1, latent2, terms = flow.losses(z, 1, 1, decoder)
    path = flow.traverse(z, 1, 3)
    torch.testing.assert_close(latent1.detach(), path[2])
    torch.testing.assert_close(latent2.detach(), path[3])
    assert set(terms) == {"wave", "initial", "jvp"}
    (terms["initial"] + terms["wave"] - terms["jvp"] + latent2.sum()).backward()
    grads = [p.grad for p in flow.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # only the chosen potential (and its wave speed) receives gradient
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in flow.potentials[0].parameters())
    assert flow.wave_speed.grad[0] == 0 and flow.wave_speed.grad[1] != 0


def test_jvp_term_is_the_squared_directional_derivative_of_the_decoder():
    flow = _flow(dim=2, K=1, steps=2)
    weight = torch.randn(5, 2, dtype=torch.float64)

    def decoder(z):  # linear: the JVP is weight @ v
        return z @ weight.T

    z = torch.randn(4, 2, dtype=torch.float64)
    latent1, latent2, terms = flow.losses(z, 0, 0, decoder)
    v = (latent2 - latent1).detach()
    assert float(terms["jvp"].detach()) == pytest.approx(float((v @ weight.T).square().mean()))


def test_linear_directions_are_unit_steps_and_pair_matches_traverse():
    torch.manual_seed(0)
    lin = LinearDirections(4, 3, step_size=0.7)
    z = torch.randn(2, 4)
    path = lin.traverse(z, 2, 3)
    steps = path.diff(dim=0).norm(dim=-1)
    torch.testing.assert_close(steps, torch.full_like(steps, 0.7))
    a, b = lin.pair(z, 2, 1)
    torch.testing.assert_close(a.detach(), path[2])
    torch.testing.assert_close(b.detach(), path[3])


def test_pair_classifier_images_and_latents():
    torch.manual_seed(0)
    images = PairClassifier(4, in_channels=1, width=8)
    assert images(torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)).shape == (3, 4)
    latents = PairClassifier(4, latent_dim=5, width=8)
    assert latents(torch.randn(3, 5), torch.randn(3, 5)).shape == (3, 4)
    with pytest.raises(PriorlabError, match="latent_dim"):
        images(torch.randn(3, 5), torch.randn(3, 5))


@pytest.mark.parametrize("bad", [
    lambda: PotentialFlow(0, 2),
    lambda: PotentialFlow(3, 2, num_steps=1),
    lambda: PotentialFlow(3, 2, hidden=math.nan),
    lambda: PotentialFlow(3, 2).traverse(torch.randn(2, 4), 0, 2),
    lambda: PotentialFlow(3, 2).traverse(torch.randn(2, 3), 2, 2),
    lambda: PotentialFlow(3, 2).traverse(torch.randn(2, 3), -1, 2),
    lambda: PotentialFlow(3, 2).traverse(torch.randn(2, 3), 0, -1),
    lambda: PotentialFlow(3, 2).traverse(torch.randint(0, 2, (2, 3)), 0, 2),
    lambda: PotentialFlow(3, 2).wave_residual(torch.tensor([[math.inf, 0.0, 0.0]]), 0.0, 0),
    lambda: PotentialFlow(3, 2, num_steps=3).losses(torch.randn(2, 3), 0, 2, nn.Identity()),
    lambda: PotentialFlow(3, 2).losses(torch.randn(2, 3), 0, 0, None),
    lambda: LinearDirections(3, 2, step_size=-1.0),
    lambda: PairClassifier(3)(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8)),
])
def test_bad_input_raises_a_clear_error(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_state_dict_round_trip_keeps_the_traversals():
    flow = _flow()
    copy = PotentialFlow(3, 2, num_steps=4).double()
    copy.load_state_dict(flow.state_dict())
    z = torch.randn(3, 3, dtype=torch.float64)
    torch.testing.assert_close(copy.traverse(z, 1, 3), flow.traverse(z, 1, 3))


def test_card_and_claim_are_wired():
    card = get("pde-traversal")
    assert card.paper.seed_id == 59 and card.reproduction == "p059_pde_traversal"
    claim = p059_pde_traversal.CLAIM
    assert {c.baseline for c in claim.comparisons} == {"linear", "pca"}
    with pytest.raises(PriorlabError, match="did you mean"):
        p059_pde_traversal.run("potential_flows", claim.tiers["smoke"], 0)


def test_wrong_dtype_and_non_finite_time_raise_a_clear_error():
    torch.manual_seed(0)
    flow = PotentialFlow(3, 2, num_steps=3)
    with pytest.raises(PriorlabError, match=r"\bz\b"):  # half latents into float32 potentials (fuzz)
        flow.traverse(torch.randn(2, 3).half(), 0, 2)
    with pytest.raises(PriorlabError, match=r"\bt\b"):
        flow.wave_residual(torch.randn(2, 3), math.nan, 0)
