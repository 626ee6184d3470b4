"""Kernel ridge task classifiers (KCL) and generative kernel continual learning (seed 56)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.continual.kernel import (
    KernelRidgeClassifier,
    KernelRidgeHead,
    kernel_matrix,
    kernel_ridge_logits,
)
from priorlab.errors import PriorlabError
from priorlab.methods.generative_kernel_cl import (
    ConditionalVAE,
    generated_support,
    generative_kernel_loss,
)
from priorlab.reproductions import p056_generative_kernel_cl as repro


def test_kernel_matrix_known_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0]])
    assert torch.allclose(kernel_matrix(a, b), torch.tensor([[0.0], [2.0]]))
    rbf = kernel_matrix(a, b, "rbf", length_scale=1.0)  # squared distances 5 and 2
    assert torch.allclose(rbf, torch.exp(-torch.tensor([[2.5], [1.0]])))
    assert torch.allclose(kernel_matrix(a, a, "rbf").diagonal(), torch.ones(2))


def test_kernel_ridge_logits_known_value():
    support = torch.eye(2)
    logits = kernel_ridge_logits(support, torch.tensor([0, 1]), support, 2, ridge=0.0)
    assert torch.allclose(logits, torch.eye(2) / 1.01)  # ridge floor 0.01


def test_linear_kernel_ridge_equals_primal_ridge_regression():
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g,
                                                                             dtype=torch.float64)
    y = torch.arange(3).repeat(4)[:10]
    lam = 0.3 + 0.01
    w = torch.linalg.solve(x.T @ x + lam * torch.eye(4, dtype=x.dtype),
                           x.T @ F.one_hot(y, 3).to(x.dtype))
    dual = kernel_ridge_logits(x, y, q, 3, ridge=-0.3)  # |ridge| is used
    assert torch.allclose(dual, q @ w)
    scaled = kernel_ridge_logits(x, y, q, 3, ridge=0.3, scale=2.0, shift=-1.0)
    assert torch.allclose(scaled, 2 * (q @ w) - 1)


def test_head_gradients_are_finite_and_reach_every_parameter():
    head = KernelRidgeHead(2, kind="rbf", length_scale=2.0)
    s = torch.randn(6, 3, requires_grad=True)
    loss = F.cross_entropy(head(s, torch.tensor([0, 1] * 3), torch.randn(4, 3)),
                           torch.tensor([0, 1, 1, 0]))
    loss.backward()
    for t in (s.grad, head.ridge.grad, head.scale.grad, head.shift.grad):
        assert t is not None and torch.isfinite(t).all()


def _classifier():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
    return KernelRidgeClassifier(features, torch.randn(8, 4), torch.arange(2).repeat(4), 2)


def test_classifier_trains_and_round_trips():
    model = _classifier()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g)
    y = (x[:, 0] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = F.cross_entropy(model(x), y).item()
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first
    clone = _classifier()
    clone.support_x.zero_()
    clone.load_state_dict(model.state_dict())  # the support set travels with the weights
    assert torch.equal(clone(x), model(x))


@pytest.mark.parametrize("call", [
    lambda: kernel_matrix(torch.zeros(2, 3), torch.zeros(2, 4)),
    lambda: kernel_matrix(torch.zeros(2, 3), torch.zeros(2, 3), "gaussian"),
    lambda: kernel_ridge_logits(torch.zeros(2, 3), torch.tensor([0, 2]), torch.zeros(1, 3), 2),
    lambda: kernel_ridge_logits(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.zeros(1, 3), 2),
    lambda: kernel_ridge_logits(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(1, 3), 2,
                                ridge=float("nan")),
    lambda: kernel_ridge_logits(torch.full((2, 3), float("nan")), torch.tensor([0, 1]),
                                torch.zeros(1, 3), 2),
    lambda: KernelRidgeHead(2, ridge=-0.1),
    lambda: ConditionalVAE((1, 8, 8), 10).sample(torch.tensor([10])),
    lambda: ConditionalVAE((1, 8, 8), 10).elbo_loss(torch.rand(2, 1, 4, 4), torch.tensor([0, 1])),
])
def test_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


def test_unknown_kernel_suggests_a_name():
    with pytest.raises(PriorlabError, match="linear"):
        KernelRidgeHead(2, kind="linera")


def test_conditional_vae_samples_and_learns():
    torch.manual_seed(0)
    cvae = ConditionalVAE((1, 4, 4), 3, latent_dim=2, hidden=16)
    x = torch.rand(1, 1, 4, 4).round().expand(24, 1, 4, 4)
    y = torch.arange(3).repeat(8)
    samples = cvae.sample(y[:5], generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 4, 4) and bool(((samples > 0) & (samples < 1)).all())
    optimizer = torch.optim.Adam(cvae.parameters(), lr=1e-2)
    first = cvae.elbo_loss(x, y).item()
    for _ in range(50):
        loss = cvae.elbo_loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first


def test_generated_support_is_differentiable_and_labelled_locally():
    cvae = ConditionalVAE((1, 4, 4), 10, latent_dim=2, hidden=8)
    x, y = generated_support(cvae, (3, 7), per_class=4)
    assert x.shape == (8, 1, 4, 4) and y.tolist() == [0] * 4 + [1] * 4
    x.sum().backward()
    assert cvae.decoder[0].weight.grad is not None


def _step_parts(weight):
    torch.manual_seed(0)
    features = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    head, cvae = KernelRidgeHead(2), ConditionalVAE((1, 4, 4), 10, latent_dim=2, hidden=8)
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([3, 7] * 3)
    replay = (torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 0, 1]))
    loss, parts = generative_kernel_loss(features, head, cvae, x, y, (3, 7), per_class=3,
                                         supcon_weight=weight, replay=replay)
    loss.backward()
    return loss, parts, (features, head, cvae)


def test_loss_trains_every_part_and_supcon_only_when_weighted():
    loss, parts, modules = _step_parts(1.0)
    assert set(parts) == {"elbo", "ce", "supcon"} and torch.isfinite(loss)
    for module in modules:
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in module.parameters())
    plain_loss, plain_parts, _ = _step_parts(0.0)
    assert "supcon" not in plain_parts
    assert torch.isclose(loss - plain_loss, torch.tensor(parts["supcon"]))


def test_loss_rejects_labels_outside_the_task():
    with pytest.raises(PriorlabError, match="task's classes"):
        generative_kernel_loss(nn.Flatten(), KernelRidgeHead(2), ConditionalVAE((1, 2, 2), 10),
                               torch.rand(2, 1, 2, 2), torch.tensor([3, 4]), (3, 7), per_class=2)


def test_reproduction_arms_differ_and_memory_is_accounted():
    cfg = copy.deepcopy(repro.CLAIM.tiers["smoke"])
    coreset = repro.run("kcl_coreset", cfg, 0)
    generative = repro.run("gkcl_supcon", cfg, 0)
    assert coreset.info["R_test"] != generative.info["R_test"]
    assert coreset.info["memory"]["coreset_floats"] == 5 * 10 * 64
    assert generative.info["memory"]["coreset_floats"] == 0
    assert generative.info["memory"]["generator_parameters"] > 0
    full = repro.CLAIM.tiers["full"]  # the coreset gets at least the generator's memory
    assert full["per_class"] * 10 * 64 >= 11216


def test_kernel_ridge_logits_rejects_bad_coefficients_dtypes_and_overflow():
    # fuzz findings: a NaN scale or shift gave NaN logits, a two-element or string ridge / a
    # float16 query / int32 labels crashed inside torch, and support features near 1e30
    # overflowed the kernel into NaN logits
    support, labels, query = torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.randn(2, 4)
    for name, bad in (("scale", float("nan")), ("shift", float("inf")), ("ridge", "0.1"),
                      ("ridge", torch.tensor([0.1, 0.1])), ("scale", None)):
        with pytest.raises(PriorlabError, match=name):
            kernel_ridge_logits(support, labels, query, 2, **{name: bad})
    with pytest.raises(PriorlabError, match="query"):
        kernel_ridge_logits(support, labels, query.half(), 2)
    with pytest.raises(PriorlabError, match="query"):
        kernel_ridge_logits(support, labels, query[:, :3], 2)
    with pytest.raises(PriorlabError, match="support_labels"):
        kernel_ridge_logits(support, labels.int(), query, 2)
    with pytest.raises(PriorlabError, match="overflows"):
        kernel_ridge_logits(support * 1e30, labels, query, 2)
    # a learnable one-element ridge still works, with its gradient
    ridge = torch.tensor(0.1, requires_grad=True)
    kernel_ridge_logits(support, labels, query, 2, ridge=ridge).sum().backward()
    assert ridge.grad is not None
