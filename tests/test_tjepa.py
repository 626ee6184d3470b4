"""T-JEPA (seed 10): tokenizer, subsets, loss, EMA, representations, data loader, reproduction."""

import pytest
import torch

from priorlab.data.tabular import load_tabular, one_hot_features
from priorlab.errors import PriorlabError
from priorlab.nn.tjepa import TJEPA, FeatureTokenizer, TJEPATargetEMA, jepa_loss
from priorlab.train import fit


def _rows(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, 3, generator=g), torch.randint(0, 4, (n, 1), generator=g).float(),
                      torch.randint(0, 3, (n, 1), generator=g).float()], dim=1)


def _model(**kw):
    torch.manual_seed(0)
    args = dict(dim=16, depth=1, heads=2, ffn=16, pred_dim=8, pred_depth=1, pred_heads=2, ema_steps=10)
    return TJEPA(num_numeric=3, cardinalities=(4, 3), **(args | kw))


def test_tokenizer_known_values_and_layout():
    tok = FeatureTokenizer(num_numeric=2, cardinalities=(3,), dim=4, n_reg_tokens=1)
    x = torch.tensor([[2.0, 0.0, 1.0]])
    out = tok(x)
    assert out.shape == (1, 4, 4)
    torch.testing.assert_close(out[0, 0], tok.reg_tokens[0])
    torch.testing.assert_close(out[0, 1], 2.0 * tok.numeric_weight[0] + tok.bias[0])
    torch.testing.assert_close(out[0, 2], tok.bias[1])  # a zero numeric value keeps only its bias
    torch.testing.assert_close(out[0, 3], tok.embeddings[0].weight[1] + tok.bias[2])


def test_subsets_are_disjoint_from_context_and_in_range():
    model = TJEPA(num_numeric=10, cardinalities=(3, 3, 3, 3), dim=16, depth=1, pred_depth=1)
    for step in range(5):
        model.step.fill_(step)
        context, targets = model.sample_subsets(8)
        assert targets.shape[:2] == (4, 8)
        lo, hi = model.context_range
        assert lo <= context.shape[1] <= hi and context.shape[1] + targets.shape[2] <= 14
        for row in range(8):
            ctx = set(context[row].tolist())
            assert len(ctx) == context.shape[1]
            for k in range(4):
                tgt = set(targets[k, row].tolist())
                assert len(tgt) == targets.shape[2] and not ctx & tgt
    # draws depend on (seed, step) only: resuming gives the same subsets
    model.step.fill_(3)
    a = model.sample_subsets(8)
    model.step.fill_(3)
    assert all(torch.equal(u, v) for u, v in zip(a, model.sample_subsets(8)))


def test_loss_is_finite_and_gradients_skip_the_target_encoder():
    model = _model()
    loss = model(_rows())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model._target_parameters())
    grads = [p.grad for p in model.context_encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.tokenizer.reg_tokens.grad is not None  # the regularisation token is trained


def test_target_starts_as_copy_and_moves_by_ema():
    model = _model(ema_start=0.5, ema_end=0.5)
    online = [*model.tokenizer.parameters(), *model.context_encoder.parameters()]
    for t, s in zip(model._target_parameters(), online):
        torch.testing.assert_close(t, s)
    before = [p.clone() for p in model._target_parameters()]
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
    model.update_target()
    assert int(model.step) == 1
    moved = [a - b for a, b in zip([*model._target_parameters()][len(list(model.tokenizer.parameters())):],
                                   before[len(list(model.tokenizer.parameters())):])]
    assert all(torch.allclose(m, torch.full_like(m, 0.5)) for m in moved)


def test_momentum_schedule_rises_to_end():
    model = _model(ema_start=0.9, ema_end=1.0, ema_steps=10)
    assert model.momentum() == pytest.approx(0.9)
    model.step.fill_(5)
    assert model.momentum() == pytest.approx(0.95)
    model.step.fill_(50)
    assert model.momentum() == pytest.approx(1.0)


def test_fit_with_adapter_lowers_loss_and_representations_shape():
    model = _model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    x = _rows(64)
    history = fit(model, [(x, torch.zeros(64))], opt, jepa_loss, epochs=15,
                  adapters=[TJEPATargetEMA()], show_progress=False)
    assert history["loss/task"][-1] < history["loss/task"][0]
    assert int(model.step) == 15
    reps = model.representations(x)
    assert reps.shape == (64, (1 + 5) * 16) and model.training


def test_no_regularisation_tokens_model_runs():
    model = _model(n_reg_tokens=0)
    assert torch.isfinite(model(_rows()))
    assert model.representations(_rows()).shape == (32, 5 * 16)


@pytest.mark.parametrize("bad", [
    lambda m: m(torch.randn(4, 4)),
    lambda m: m(torch.full((4, 5), 9.0)),
    lambda m: m(torch.tensor([[0.0, 0.0, 0.0, 1.5, 0.0]])),
    lambda m: m(torch.full((4, 5), float("nan"))),
    lambda m: m(torch.zeros(4, 5, dtype=torch.long)),
])
def test_bad_inputs_raise(bad):
    with pytest.raises(PriorlabError):
        bad(_model())


@pytest.mark.parametrize("kwargs", [dict(heads=3), dict(num_targets=0), dict(context_share=(0.2,)),
                                    dict(target_share=(0.5, 1.0)), dict(ema_end=0.5)])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(PriorlabError):
        _model(**kwargs)


def test_adult_loader_splits_and_errors():
    data = load_tabular("adult")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (26049, 6512, 16281)
    assert data.num_numeric == 6 and len(data.cardinalities) == 8
    num = data.x_train[:, :6]
    torch.testing.assert_close(num.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    codes = data.x_test[:, 6:]
    assert (codes >= 0).all() and (codes < torch.tensor(data.cardinalities)).all()
    onehot = one_hot_features(data.x_val[:10], data.num_numeric, data.cardinalities)
    assert onehot.shape == (10, 6 + sum(data.cardinalities))
    assert torch.equal(onehot[:, 6:].sum(1), torch.full((10,), 8.0))
    with pytest.raises(PriorlabError, match="did you mean 'adult'"):
        load_tabular("adlut")


def test_reproduction_method_arm_differs_from_baseline():
    from priorlab.reproductions.p010_tjepa import CLAIM, run

    cfg = dict(CLAIM.tiers["smoke"])
    raw, tjepa = run("raw_mlp", cfg, 0), run("tjepa_mlp", cfg, 0)
    assert "rank_retained" in tjepa.metrics and "rank_retained" not in raw.metrics
    assert raw.info["n_features_in"] != tjepa.info["n_features_in"]
    with pytest.raises(PriorlabError):
        run("tjepa", cfg, 0)
