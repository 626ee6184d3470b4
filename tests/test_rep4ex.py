"""Rep4Ex (seed 44): penalty known values and zero set, control-function formula, errors, repro."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.rep4ex import (
    interventional_mean,
    linear_fit,
    linear_invariance_penalty,
    median_bandwidth,
)
from priorlab.nn.rep4ex import (
    Rep4ExAutoencoder,
    Rep4ExLoss,
    fit_control_function,
    train_autoencoder,
)
from priorlab.registry import get
from priorlab.reproductions import p044_rep4ex


def _actions(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1, g


def test_linear_fit_recovers_coefficients_exactly():
    a, _ = _actions(50)
    coef = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    intercept = torch.tensor([0.3, -1.0], dtype=torch.float64)
    fitted_intercept, fitted_coef, residual = linear_fit(intercept + a @ coef.T, a)
    torch.testing.assert_close(fitted_coef, coef)
    torch.testing.assert_close(fitted_intercept, intercept)
    assert residual.abs().max() < 1e-10


def test_penalty_known_value_on_tiny_input():
    # Two latent coordinates: 1-d action, residual of OLS on (1, a) by hand.
    a = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    latent = torch.tensor([[0.0], [2.0], [1.0], [3.0]], dtype=torch.float64)
    design = torch.cat([torch.ones(4, 1, dtype=torch.float64), a], 1)
    beta = torch.linalg.solve(design.T @ design, design.T @ latent)
    r = (latent - design @ beta)[:, 0]
    k = torch.exp(-(a - a.T).square() / (2 * 1.5 ** 2))
    expected = (k * torch.outer(r, r)).sum() / 16
    got = linear_invariance_penalty(latent, a, bandwidth=1.5, standardize=False)
    torch.testing.assert_close(got, expected)


def test_penalty_is_zero_for_affine_latents_and_positive_for_nonlinear_ones():
    a, g = _actions()
    v = torch.randn(200, 2, generator=g, dtype=torch.float64)
    affine = a @ torch.tensor([[1.0, 0.4], [-0.3, 0.8]], dtype=torch.float64).T + 0.5 * v
    assert linear_invariance_penalty(affine, a) < 1e-2
    # E[latent | A] not affine: a large penalty
    curved = torch.stack([a[:, 0] ** 2, torch.sin(3 * a[:, 1])], 1) + 0.5 * v
    assert linear_invariance_penalty(curved, a) > 5 * linear_invariance_penalty(affine, a)
    # exact zero for a latent that is exactly affine in A (no noise)
    assert linear_invariance_penalty(a @ a.new_tensor([[2.0, 1.0], [0.0, 1.0]]) + 1.0, a,
                                     standardize=False) < 1e-20


def test_penalty_is_scale_invariant_when_standardized_and_non_negative():
    a, g = _actions()
    latent = torch.randn(200, 2, generator=g, dtype=torch.float64) + a ** 2
    base = linear_invariance_penalty(latent, a)
    torch.testing.assert_close(linear_invariance_penalty(100 * latent, a), base)
    assert base >= 0


def test_penalty_gradient_is_finite_and_nonzero():
    a, g = _actions(64)
    latent = (torch.randn(64, 2, generator=g, dtype=torch.float64) + a ** 2).requires_grad_()
    linear_invariance_penalty(latent, a).backward()
    assert torch.isfinite(latent.grad).all() and latent.grad.abs().sum() > 0


def test_interventional_mean_matches_the_formula():
    residual = torch.tensor([[0.0, 1.0], [1.0, -1.0], [-1.0, 0.0]])
    intercept, coef = torch.tensor([0.5, 0.0]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    new = torch.tensor([[3.0, -3.0]])

    def outcome(latent, res):
        return latent[:, 0] ** 2 + res[:, 1]

    expected = torch.stack([outcome((intercept + new[0] @ coef.T + r)[None], r[None])
                            for r in residual]).mean()
    torch.testing.assert_close(interventional_mean(outcome, intercept, coef, residual, new)[0],
                               expected)


def test_control_function_recovers_a_linear_effect_under_confounding():
    torch.manual_seed(0)
    a, g = _actions(800, seed=1)
    a = a.float()
    v = torch.randn(800, 2, generator=g)
    z = a @ torch.tensor([[1.0, 0.0], [0.5, 1.0]]).T + v
    y = z[:, 0] - z[:, 1] + 2 * v[:, 0]  # naive regression of y on z is biased by v
    stage2 = fit_control_function(z, a, y, steps=300, lr=1e-2)
    new = torch.tensor([[2.5, 2.5], [-2.5, 0.0]])
    truth = (new @ torch.tensor([[1.0, 0.0], [0.5, 1.0]]).T) @ torch.tensor([1.0, -1.0])
    assert (stage2.predict(new) - truth).abs().max() < 0.5


def test_zero_strength_loss_is_reconstruction_only_and_strength_changes_it():
    torch.manual_seed(0)
    model = Rep4ExAutoencoder(input_dim=4, latent_dim=2, hidden=8)
    x, action = torch.randn(20, 4), torch.rand(20, 2)
    out = model(x)
    recon = (out[1] - x).square().mean()
    torch.testing.assert_close(Rep4ExLoss(0.0)(out, (x, action)), recon)
    loss = Rep4ExLoss(5.0)
    assert loss(out, (x, action)) > recon
    assert set(loss.last_terms) == {"reconstruction", "invariance"}


def test_train_autoencoder_lowers_loss_and_state_dict_round_trips():
    torch.manual_seed(0)
    a = torch.rand(128, 2) * 2 - 1
    x = torch.tanh(torch.cat([a, a ** 2], 1) @ torch.randn(4, 6))
    model = Rep4ExAutoencoder(input_dim=6, latent_dim=2, hidden=16)
    history = train_autoencoder(model, x, a, strength=1.0, epochs=20, batch_size=64, lr=1e-2)
    assert history[-1] < history[0]
    copy = Rep4ExAutoencoder(input_dim=6, latent_dim=2, hidden=16)
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy(x)[0], model(x)[0])


@pytest.mark.parametrize("bad", [
    lambda: linear_invariance_penalty(torch.randn(10, 2), torch.randn(9, 2)),
    lambda: linear_invariance_penalty(torch.randn(3, 2), torch.randn(3, 2)),
    lambda: linear_invariance_penalty(torch.randn(10), torch.randn(10, 2)),
    lambda: linear_invariance_penalty(torch.full((10, 2), float("nan")), torch.randn(10, 2)),
    lambda: linear_invariance_penalty(torch.randn(10, 2), torch.randint(0, 3, (10, 2))),
    lambda: linear_invariance_penalty(torch.randn(10, 2), torch.randn(10, 2), bandwidth=0.0),
    lambda: median_bandwidth(torch.zeros(5, 2)),
    lambda: Rep4ExLoss(strength=-0.1),
    lambda: Rep4ExAutoencoder(input_dim=3, latent_dim=0),
    lambda: interventional_mean(lambda p, r: p[:, 0], torch.zeros(2), torch.zeros(2, 2),
                                torch.zeros(4, 2), torch.zeros(3, 3)),
    lambda: fit_control_function(torch.randn(10, 2), torch.randn(10, 2), torch.randn(9)),
])
def test_bad_input_raises_a_clear_error(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_card_and_reproduction_arms():
    card = get("rep4ex")
    assert card.seed_id == 44 and card.reproduction == "p044_rep4ex"
    with pytest.raises(PriorlabError):
        p044_rep4ex.run("rep4x", p044_rep4ex.CLAIM.tiers["smoke"], 0)


def test_method_arm_differs_from_the_autoencoder_arm():
    cfg = {**p044_rep4ex.CLAIM.tiers["smoke"], "n_train": 120, "n_eval": 60, "grid": 5,
           "stage2_steps": 10, "truth_samples": 200}
    method = p044_rep4ex.run("rep4ex", cfg, 0).metrics
    baseline = p044_rep4ex.run("ae", cfg, 0).metrics
    assert set(method) == {"extrap_mse", "interp_mse", "affine_r2"}
    assert method["extrap_mse"] != baseline["extrap_mse"]


@pytest.mark.parametrize("change, name", [
    (dict(latent=torch.randn(8, 2).half()), "latent"),  # lstsq needs float32/64 (fuzz)
    (dict(action=torch.randn(8, 1).double()), "action"),  # one dtype for both
    (dict(standardize=torch.tensor([0.5, 0.5])), "standardize"),
    (dict(bandwidth=1e-45), "bandwidth"),  # squares to zero
])
def test_linear_invariance_penalty_bad_input_raises(change, name):
    kwargs = dict(latent=torch.randn(8, 2), action=torch.randn(8, 1), bandwidth=1.0)
    kwargs.update(change)
    with pytest.raises(PriorlabError, match=name):
        linear_invariance_penalty(**kwargs)
