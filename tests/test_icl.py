"""In-context regression prompts, reference learners, the ICL transformer and the seed-12 run."""

import math

import pytest
import torch

from priorlab.data.icl import (ICLBatch, gd_predict, icl_regression_batch, ols_predict,
                               prefix_predictions, ridge_predict, squared_prediction_difference)
from priorlab.errors import PriorlabError
from priorlab.methods.icl import ICLTransformer



def _ctx(xs, ys, dtype=torch.float64):
    return torch.tensor(xs, dtype=dtype)[None], torch.tensor(ys, dtype=dtype)[None]


def test_batch_is_linear_without_noise_and_seeded():
    a = icl_regression_batch(8, 5, 3, generator=torch.Generator().manual_seed(0))
    b = icl_regression_batch(8, 5, 3, generator=torch.Generator().manual_seed(0))
    assert a.xs.shape == (8, 5, 3) and a.ys.shape == (8, 5) and a.weights.shape == (8, 3)
    torch.testing.assert_close(a.ys, torch.einsum("bnd,bd->bn", a.xs, a.weights))
    assert torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys)


def test_batch_noise_has_the_requested_scale():
    batch = icl_regression_batch(4000, 10, 2, noise_std=0.5, weight_std=2.0,
                                 generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    residual = batch.ys - torch.einsum("bnd,bd->bn", batch.xs, batch.weights)
    assert float(residual.std()) == pytest.approx(0.5, rel=0.02)
    assert float(batch.weights.std()) == pytest.approx(2.0, rel=0.03)


def test_least_squares_by_hand():
    # under-determined: one example x = (1, 0), y = 3 -> minimum-norm w = (3, 0)
    x, y = _ctx([[1.0, 0.0]], [3.0])
    query = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert ols_predict(x, y, query).item() == pytest.approx(3.0)
    # determined, noiseless: recovers w exactly
    batch = icl_regression_batch(16, 6, 3, generator=torch.Generator().manual_seed(2),
                                 dtype=torch.float64)
    query = torch.randn(16, 3, dtype=torch.float64)
    torch.testing.assert_close(ols_predict(batch.xs, batch.ys, query),
                               (batch.weights * query).sum(-1))


def test_ridge_and_gd_by_hand():
    # 1-D, x = (1, 2), y = (1, 2): X^T X = 5, X^T y = 5
    x, y = _ctx([[1.0], [2.0]], [1.0, 2.0])
    query = torch.tensor([[3.0]], dtype=torch.float64)
    assert ridge_predict(x, y, query, lam=1.0).item() == pytest.approx(3 * 5 / 6)
    assert gd_predict(x, y, query, steps=1, lr=0.1).item() == pytest.approx(3 * 0.5)
    # default step 1 / (k + d + 1) = 1/4: w = 5/4
    assert gd_predict(x, y, query).item() == pytest.approx(3 * 1.25)
    # two steps at lr 0.1: w1 = 0.5, w2 = 0.5 - 0.1 * (5 * 0.5 - 5) = 0.75
    assert gd_predict(x, y, query, steps=2, lr=0.1).item() == pytest.approx(3 * 0.75)


def test_ridge_and_gd_approach_least_squares():
    batch = icl_regression_batch(32, 8, 3, noise_std=0.3,
                                 generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    query = torch.randn(32, 3, dtype=torch.float64)
    ols = ols_predict(batch.xs, batch.ys, query)
    torch.testing.assert_close(ridge_predict(batch.xs, batch.ys, query, lam=1e-9), ols)
    largest = float(torch.linalg.eigvalsh(batch.xs.transpose(1, 2) @ batch.xs).max())
    torch.testing.assert_close(gd_predict(batch.xs, batch.ys, query, steps=3000, lr=1 / largest),
                               ols)


def test_prefix_predictions_use_only_earlier_examples():
    batch = icl_regression_batch(4, 6, 2, generator=torch.Generator().manual_seed(4),
                                 dtype=torch.float64)
    preds = prefix_predictions(ridge_predict, batch.xs, batch.ys, lam=0.5)
    assert torch.equal(preds[:, 0], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(preds[:, 3], ridge_predict(batch.xs[:, :3], batch.ys[:, :3],
                                                          batch.xs[:, 3], lam=0.5))
    changed = batch.ys.clone()
    changed[:, 4] += 10.0
    later = prefix_predictions(ridge_predict, batch.xs, changed, lam=0.5)
    torch.testing.assert_close(later[:, :5], preds[:, :5])
    assert not torch.allclose(later[:, 5], preds[:, 5])


def test_spd_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 4.0]])
    torch.testing.assert_close(squared_prediction_difference(a, b), torch.tensor([2.0, 2.0]))


def test_token_layout_is_the_official_one():
    model = ICLTransformer(2, max_examples=3, num_layers=1, hidden=8, num_heads=2)
    xs = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    ys = torch.tensor([[5.0, 6.0]])
    expected = torch.tensor([[[0.0, 1.0, 2.0], [5.0, 0.0, 0.0], [0.0, 3.0, 4.0]]])
    assert torch.equal(model.tokens(xs, ys), expected)


def test_transformer_is_causal_and_accepts_batches():
    torch.manual_seed(0)
    model = ICLTransformer(3, max_examples=6, num_layers=2, hidden=16, num_heads=4)
    batch = icl_regression_batch(5, 6, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(batch.xs, batch.ys)
        assert out.shape == (5, 6)
        torch.testing.assert_close(model(batch), out)
        torch.testing.assert_close(model((batch.xs, batch.ys)), out)
        # prediction i sees x_1..x_i and y_1..y_{i-1}: changing y_3 moves only positions 4, 5
        ys = batch.ys.clone()
        ys[:, 3] += 5.0
        moved = model(batch.xs, ys)
        torch.testing.assert_close(moved[:, :4], out[:, :4])
        assert not torch.allclose(moved[:, 4:], out[:, 4:])
        # changing x_3 moves position 3 onward
        xs = batch.xs.clone()
        xs[:, 3] += 1.0
        moved = model(xs, batch.ys)
        torch.testing.assert_close(moved[:, :3], out[:, :3])
        assert not torch.allclose(moved[:, 3], out[:, 3])


def test_transformer_learns_in_context():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    model = ICLTransformer(1, max_examples=4, num_layers=1, hidden=16, num_heads=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        batch = icl_regression_batch(64, 4, 1, generator=g)
        loss = (model(batch) - batch.ys)[:, 1:].pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(float(loss.detach()))
    # E[y^2] = 1: a model that ignores the context cannot beat 1; one example pins w in 1-D
    assert sum(losses[:20]) / 20 > 0.9
    assert sum(losses[-40:]) / 40 < 0.75


@pytest.mark.parametrize("bad", [
    lambda: icl_regression_batch(4, 5, 2, weight_std=0.0),
    lambda: icl_regression_batch(4, 5, 2, noise_std=float("nan")),
    lambda: icl_regression_batch(4, 0, 2),
    lambda: icl_regression_batch(4, 5, 2, dtype=torch.int64),
    lambda: ridge_predict(*_ctx([[1.0]], [1.0]), torch.ones(1, 1, dtype=torch.float64), lam=-1.0),
    lambda: gd_predict(*_ctx([[1.0]], [1.0]), torch.ones(1, 1, dtype=torch.float64), lr=0.0),
    lambda: ols_predict(*_ctx([[1.0]], [1.0]), torch.ones(1, 2, dtype=torch.float64)),
    lambda: ols_predict(*_ctx([[float("nan")]], [1.0]), torch.ones(1, 1, dtype=torch.float64)),
    lambda: prefix_predictions(ols_predict, torch.ones(2, 3), torch.ones(2, 3)),
    lambda: squared_prediction_difference(torch.ones(2, 3), torch.ones(2, 4)),
    lambda: ICLTransformer(2, max_examples=0),
    lambda: ICLTransformer(2, max_examples=4, num_layers=True),
    lambda: ICLTransformer(2, max_examples=4)(torch.ones(1, 4, 2, dtype=torch.long),
                                              torch.ones(1, 4)),
    lambda: ICLTransformer(2, max_examples=4)(ICLBatch(torch.ones(1, 4, 2), torch.ones(1, 3),
                                                       torch.ones(1, 2))),
])
def test_bad_input_raises_priorlab_error(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_reproduction_smoke_runs_every_arm():
    from priorlab.reproductions import p012_icl as repro

    cfg = {**repro.CLAIM.tiers["smoke"], "steps": 40, "eval_prompts": 64}
    outs = {arm: repro.run(arm, cfg, seed=0) for arm in repro.CLAIM.arms}
    for out in outs.values():
        assert set(out.metrics) >= {repro.CLAIM.metric, *repro.CLAIM.extra_metrics}
        assert all(math.isfinite(v) for v in out.metrics.values())
        assert len(out.curves["spd_by_context"]["y"]) == cfg["examples"] - 1
        assert out.metrics["spd"] >= 0
    # each condition's ridge is Bayes-optimal for its own noise: none without noise
    assert outs["noisy_ridge"].info["ridge_lambda"] == cfg["noise_std"] ** 2
    assert outs["noiseless_ols"].info["ridge_lambda"] == 0.0
    # arms of one condition score the same model against different learners: the SPDs differ,
    # the model's own error does not
    for comparison in repro.CLAIM.comparisons:
        method, baseline = outs[comparison.method], outs[comparison.baseline]
        assert method.metrics["spd"] != baseline.metrics["spd"]
        assert method.metrics["icl_mse"] == baseline.metrics["icl_mse"]
    # noiseless least squares interpolates once the context has d examples: zero error there
    assert outs["noiseless_ols"].metrics["reference_mse"] < outs["noiseless_gd"].metrics["reference_mse"]
    with pytest.raises(PriorlabError):
        repro.run("noisy_lasso", cfg, seed=0)
    with pytest.raises(PriorlabError):
        repro.run("noiseless_ridge", cfg, seed=0)
