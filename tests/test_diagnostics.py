"""priorlab.diagnostics: Hessian products, trace and sharpness, rank measures, linear probes.

Checked against closed forms: quadratic losses with a chosen Hessian, linear regression
(H = XᵀX / n), matrices with a chosen singular spectrum, populations with a known
conditional entropy.
"""

import math

import pytest
import torch
from torch import nn

from priorlab.diagnostics.hessian import (
    TraceEstimate,
    hessian_matrix,
    hutchinson_trace,
    hvp,
    top_eigenvalue,
)
from priorlab.diagnostics.probe import fit_linear_probe, linear_probe
from priorlab.diagnostics.rank import effective_rank, srank
from priorlab.errors import PriorlabError

# ---- models with a known Hessian ----------------------------------------------------------------


class Quadratic(nn.Module):
    """Outputs its parameter; with :func:`quadratic_loss` the loss is 0.5 θᵀ A θ, so H = A."""

    def __init__(self, dim):
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(-1, 1, dim, dtype=torch.float64))

    def forward(self, x):
        return self.theta


def quadratic_loss(matrix):
    return lambda out, target: 0.5 * out @ matrix @ out


def with_spectrum(eigenvalues, seed=0):
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


DUMMY = (torch.zeros(1, 1), torch.zeros(1))


def regression(n=30, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1).double()
    xa = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    return model, x, y, xa.T @ xa / n  # weight first, then bias: the parameter order


def mse(out, target):
    return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()


# ---- Hessian-vector products and the exact Hessian ------------------------------------------


def test_hvp_of_quadratic_is_matrix_vector_product():
    a = with_spectrum([3.0, 1.0, -0.5, 0.25])
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(hvp(Quadratic(4), quadratic_loss(a), DUMMY, v), a @ v)
    as_list = hvp(Quadratic(4), quadratic_loss(a), DUMMY, [v])
    assert isinstance(as_list, list) and as_list[0].shape == (4,)
    torch.testing.assert_close(as_list[0], a @ v)


def test_hessian_of_linear_regression_is_gram_matrix_over_any_batching():
    model, x, y, gram = regression()
    torch.testing.assert_close(hessian_matrix(model, mse, (x, y)), gram)
    # unequal batches are weighted by size: the Hessian of the mean over all samples
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    torch.testing.assert_close(hessian_matrix(model, mse, batches), gram)
    torch.testing.assert_close(hessian_matrix(model, mse, lambda: iter(batches)), gram)


def test_selected_params_give_the_matching_block():
    model, x, y, gram = regression()
    block = gram[:4, :4]  # the weight's block
    torch.testing.assert_close(hessian_matrix(model, mse, (x, y), params=["weight"]), block)
    torch.testing.assert_close(hessian_matrix(model, mse, (x, y), params=[model.weight]), block)


def test_loss_linear_in_params_has_zero_curvature():
    model = nn.Linear(3, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(hessian_matrix(model, lambda out, t: out.sum(), (x, None)),
                       torch.zeros(4, 4, dtype=torch.float64))


def test_measurement_runs_in_eval_mode_and_restores_training_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    first = hessian_matrix(model, mse, (x, y))
    assert model.training
    torch.testing.assert_close(hessian_matrix(model, mse, (x, y)), first)  # dropout was off


# ---- trace and top eigenvalue ------------------------------------------------------------------


def test_rademacher_hutchinson_is_exact_for_a_diagonal_hessian():
    a = torch.diag(torch.tensor([4.0, -1.0, 2.5], dtype=torch.float64))
    est = hutchinson_trace(Quadratic(3), quadratic_loss(a), DUMMY, num_samples=3)
    assert isinstance(est, TraceEstimate)
    assert est.trace == pytest.approx(5.5, abs=1e-12) and est.std_error == pytest.approx(0, abs=1e-12)
    assert float(est) == est.trace


def test_hutchinson_is_unbiased_and_deterministic():
    a = with_spectrum([5.0, 2.0, 1.0, -1.0, 0.5])
    loss = quadratic_loss(a)
    est = hutchinson_trace(Quadratic(5), loss, DUMMY, num_samples=800, seed=3)
    assert abs(est.trace - 7.5) < 4 * est.std_error
    assert est.std_error < 0.3
    again = hutchinson_trace(Quadratic(5), loss, DUMMY, num_samples=800, seed=3)
    assert again == est
    other = hutchinson_trace(Quadratic(5), loss, DUMMY, num_samples=20, seed=4)
    assert other.trace != hutchinson_trace(Quadratic(5), loss, DUMMY, num_samples=20, seed=3).trace
    gauss = hutchinson_trace(Quadratic(5), loss, DUMMY, num_samples=800, distribution="gaussian")
    assert abs(gauss.trace - 7.5) < 4 * gauss.std_error


def test_hutchinson_on_a_network_matches_the_exact_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    exact = float(torch.trace(hessian_matrix(model, nn.functional.cross_entropy, (x, y))))
    est = hutchinson_trace(model, nn.functional.cross_entropy, (x, y), num_samples=800)
    assert abs(est.trace - exact) < 4 * est.std_error


def test_top_eigenvalue_by_power_iteration():
    a = with_spectrum([5.0, 2.0, 1.0, -1.0])
    assert top_eigenvalue(Quadratic(4), quadratic_loss(a), DUMMY, tol=1e-10, iters=500) == \
        pytest.approx(5.0, rel=1e-6)
    # the largest-magnitude eigenvalue is negative: the largest algebraic one is still found
    b = with_spectrum([1.0, 0.5, -4.0], seed=1)
    assert top_eigenvalue(Quadratic(3), quadratic_loss(b), DUMMY, tol=1e-12, iters=2000) == \
        pytest.approx(1.0, rel=1e-5)
    model, x, y, gram = regression()
    assert top_eigenvalue(model, mse, (x, y), tol=1e-10, iters=1000) == \
        pytest.approx(float(torch.linalg.eigvalsh(gram)[-1]), rel=1e-6)


@pytest.mark.parametrize("bad", [
    lambda m, x, y: hvp(m, mse, (x, y), torch.ones(3, dtype=torch.float64)),  # wrong length
    lambda m, x, y: hvp(m, mse, (x, y), torch.full((5,), float("nan"), dtype=torch.float64)),
    lambda m, x, y: hutchinson_trace(m, mse, (x, y), num_samples=0),
    lambda m, x, y: hutchinson_trace(m, mse, (x, y), distribution="rademaker"),
    lambda m, x, y: hutchinson_trace(m, mse, (x, y), generator=torch.Generator(), seed=1),
    lambda m, x, y: top_eigenvalue(m, mse, (x, y), iters=0),
    lambda m, x, y: top_eigenvalue(m, mse, (x, y), tol=float("nan")),
    lambda m, x, y: hessian_matrix(m, mse, []),  # no batch
    lambda m, x, y: hessian_matrix(m, mse, 3),  # not batches
    lambda m, x, y: hessian_matrix(m, "mse", (x, y)),
    lambda m, x, y: hessian_matrix(m, lambda o, t: (o.squeeze(-1) - t) ** 2, (x, y)),  # not scalar
    lambda m, x, y: hessian_matrix(m, lambda o, t: o.sum() * float("nan"), (x, y)),
    lambda m, x, y: hessian_matrix(m, mse, (x, y), params=["wieght"]),
    lambda m, x, y: hessian_matrix(m, mse, (x, y), params=[nn.Parameter(torch.zeros(2))]),
    lambda m, x, y: hessian_matrix(m, mse, (x, y), params=[]),
    lambda m, x, y: hessian_matrix(m, mse, (x, y), params=["weight", "weight"]),
    lambda m, x, y: hessian_matrix(m, mse, (x, y), max_params=2),
    lambda m, x, y: hessian_matrix("model", mse, (x, y)),
])
def test_misuse_raises_a_clear_error(bad):
    model, x, y, _ = regression()
    with pytest.raises(PriorlabError):
        bad(model, x, y)


def test_frozen_parameters_are_refused_when_selected_and_skipped_by_default():
    model, x, y, gram = regression()
    model.bias.requires_grad_(False)
    torch.testing.assert_close(hessian_matrix(model, mse, (x, y)), gram[:4, :4])
    with pytest.raises(PriorlabError, match="does not require grad"):
        hessian_matrix(model, mse, (x, y), params=["bias"])


# ---- rank measures ---------------------------------------------------------------------------


def with_singular_values(values, rows=8, cols=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(values), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


def test_effective_rank_closed_forms():
    assert effective_rank(with_singular_values([3.0, 3.0, 3.0])) == pytest.approx(3.0)
    assert effective_rank(with_singular_values([7.0])) == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): entropy 1.5 ln 2, erank 2^1.5
    assert effective_rank(with_singular_values([2.0, 1.0, 1.0])) == pytest.approx(2 ** 1.5)
    m = with_singular_values([5.0, 2.0, 0.5]).float()
    assert effective_rank(10 * m) == pytest.approx(effective_rank(m), rel=1e-5)


def test_srank_counts_singular_values_holding_one_minus_delta():
    m = with_singular_values([90.0, 9.5, 0.5])
    assert srank(m) == 2  # 90 + 9.5 = 99.5% >= 99%
    assert srank(m, delta=0.001) == 3
    assert srank(m, delta=0.2) == 1
    assert srank(with_singular_values([97.0, 2.0, 1.0])) == 2  # exactly 99% counts


def test_rank_of_zero_matrix_is_zero_and_bad_input_raises():
    assert effective_rank(torch.zeros(4, 3)) == 0.0 and srank(torch.zeros(4, 3)) == 0
    for bad in (lambda: effective_rank(torch.ones(4)), lambda: srank(torch.ones(3, 3, dtype=torch.long)),
                lambda: effective_rank(torch.tensor([[1.0, float("nan")]])),
                lambda: srank(torch.ones(3, 3), delta=1.0), lambda: effective_rank(torch.zeros(0, 3))):
        with pytest.raises(PriorlabError):
            bad()


# ---- linear probes ------------------------------------------------------------------------------


def blobs(n=200, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    return centres[y] + spread * torch.randn(n, 2, generator=g), y


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_separable_classes_are_decoded_perfectly(kind):
    x, y = blobs()
    xt, yt = blobs(seed=1)
    assert linear_probe(x, y, xt, yt, kind=kind, l2=1e-2) == 1.0


def test_probe_of_uninformative_features_is_near_chance():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 5, generator=g), torch.randint(0, 4, (2000,), generator=g)
    xt, yt = torch.randn(2000, 5, generator=g), torch.randint(0, 4, (2000,), generator=g)
    assert abs(linear_probe(x, y, xt, yt) - 0.25) < 0.05


def test_population_probe_recovers_the_conditional_entropy():
    # x in {0, 1, 2} with p(x) and p(y | x): the best probe on one-hot x predicts p(y | x)
    p_x = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    p_y = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
    feats = torch.eye(3, dtype=torch.float64)
    probe = fit_linear_probe(feats, p_y, sample_weight=p_x, l2=0.0)
    entropy = float(-(p_x[:, None] * p_y * p_y.log()).sum())
    assert probe.nll(feats, p_y, sample_weight=p_x) == pytest.approx(entropy, abs=1e-6)
    # expected accuracy under soft labels: sum_x p(x) max_y p(y | x)
    assert probe.accuracy(feats, p_y, sample_weight=p_x) == pytest.approx(0.5 * 0.8 + 0.3 * 0.7 + 0.2 * 0.4)


@pytest.mark.parametrize("bad", [
    lambda x, y: linear_probe(x, y[:-1], x, y),  # one label short
    lambda x, y: linear_probe(x, y.float(), x, y),  # float class labels
    lambda x, y: linear_probe(x, y - 5, x, y),  # negative classes
    lambda x, y: linear_probe(x.clone().fill_(float("nan")), y, x, y),
    lambda x, y: linear_probe(x, y, x[:, :1], y),  # test features of another width
    lambda x, y: linear_probe(x, y, x, y, kind="svm"),
    lambda x, y: linear_probe(x, y, x, y, l2=-1.0),
    lambda x, y: fit_linear_probe(x, y, num_classes=2),  # labels reach class 2
    lambda x, y: fit_linear_probe(x[:1], y[:1]),
    lambda x, y: fit_linear_probe(x, torch.full((len(y), 3), 0.5)),  # soft rows not summing to 1
    lambda x, y: fit_linear_probe(x, y, sample_weight=-torch.ones(len(y))),
    lambda x, y: fit_linear_probe(x, y, kind="ridge").nll(x, y),
    lambda x, y: fit_linear_probe(x, y).accuracy(x, y[:5]),
])
def test_probe_misuse_raises_a_clear_error(bad):
    x, y = blobs(n=30)
    with pytest.raises(PriorlabError):
        bad(x, y)


def test_ridge_probe_solves_its_normal_equations():
    x, y = blobs(n=60, spread=2.0)
    probe = fit_linear_probe(x, y, kind="ridge", l2=0.1)
    z = (x.double() - probe.mean) / probe.scale
    targets = torch.nn.functional.one_hot(y, 3).double()
    residual = z @ probe.weight + probe.bias - targets
    gradient = z.T @ residual / len(y) + 0.1 * probe.weight
    assert gradient.abs().max() < 1e-10
    assert math.isfinite(probe.accuracy(x, y))
