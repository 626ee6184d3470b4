"""Tests for the SSL item-tower loss with feature masking (paper 30) and its two-tower model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from priorlab.data.recsys import load_movielens_100k
from priorlab.errors import PriorlabError
from priorlab.functional.rrcm import info_nce
from priorlab.functional.ssl_recsys import (
    apply_feature_mask,
    correlated_feature_masking,
    feature_mutual_information,
    item_ssl_loss,
    random_feature_masking,
)
from priorlab.nn.two_tower import FeatureTower, TwoTower


def _items(n=12):
    g = torch.Generator().manual_seed(0)
    return [torch.arange(1, n + 1)[:, None], torch.randint(1, 4, (n, 1), generator=g),
            torch.randint(1, 6, (n, 3), generator=g)]


def test_mutual_information_known_values():
    a = np.array([0, 0, 1, 1])
    codes = np.stack([a, a, np.array([0, 1, 0, 1])], axis=1)
    mi = feature_mutual_information(codes)
    # a copy shares its whole entropy (log 2); an independent feature shares nothing
    assert mi[0, 1] == pytest.approx(math.log(2))
    assert mi[0, 0] == pytest.approx(math.log(2))
    assert mi[0, 2] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(mi, mi.T)


def test_random_masks_are_complementary_halves():
    a, b = random_feature_masking(5, 100, torch.Generator().manual_seed(0))
    assert a.dtype == torch.bool and a.shape == (100, 5)
    assert torch.equal(a, ~b)
    assert (a.sum(1) == 2).all()
    assert len({tuple(r.tolist()) for r in a}) > 3  # the halves vary between examples


def test_correlated_masks_keep_correlated_features_together():
    # features 0/1 are twins, 2/3 are twins: a view masks a twin pair, never splits it
    mi = np.array([[1.0, 0.9, 0.1, 0.0], [0.9, 1.0, 0.0, 0.1],
                   [0.1, 0.0, 1.0, 0.8], [0.0, 0.1, 0.8, 1.0]])
    a, b = correlated_feature_masking(mi, 200, torch.Generator().manual_seed(0))
    assert torch.equal(a, ~b) and (a.sum(1) == 2).all()
    assert (a[:, 0] == a[:, 1]).all() and (a[:, 2] == a[:, 3]).all()
    assert a[:, 0].any() and (~a[:, 0]).any()  # both pairs serve as seed group


def test_apply_feature_mask_pads_masked_features_and_keeps_inputs():
    items = _items()
    original = [f.clone() for f in items]
    mask = torch.zeros(12, 3, dtype=torch.bool)
    mask[:, 1] = True
    view = apply_feature_mask(items, mask)
    assert (view[1] == 0).all() and torch.equal(view[0], items[0]) and torch.equal(view[2], items[2])
    assert all(torch.equal(a, b) for a, b in zip(items, original))
    # dropout touches only multi-valued features
    dropped = apply_feature_mask(items, torch.zeros(12, 3, dtype=torch.bool), dropout=0.5,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropped[0], items[0]) and torch.equal(dropped[1], items[1])
    assert (dropped[2] == 0).sum() > (items[2] == 0).sum()


def test_ssl_loss_equals_info_nce_on_the_views_and_has_finite_gradients():
    torch.manual_seed(0)
    tower = FeatureTower([13, 4, 6], embed_dim=4, hidden=8, out_dim=4)
    items = _items()
    masks = random_feature_masking(3, 12, torch.Generator().manual_seed(1))
    loss = item_ssl_loss(tower, items, masks, tau=0.2)
    expected = info_nce(tower(apply_feature_mask(items, masks[0])),
                        tower(apply_feature_mask(items, masks[1])), tau=0.2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    grads = [p.grad for p in tower.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_masked_feature_gets_no_gradient():
    torch.manual_seed(0)
    tower = FeatureTower([13, 4, 6], embed_dim=4, hidden=8, out_dim=4)
    mask = torch.zeros(12, 3, dtype=torch.bool)
    mask[:, 1] = True
    item_ssl_loss(tower, _items(), (mask, mask.clone()), tau=0.2).backward()
    assert tower.embeddings[1].weight.grad is None or (tower.embeddings[1].weight.grad == 0).all()
    assert tower.embeddings[0].weight.grad.abs().sum() > 0


def test_two_tower_loss_is_in_batch_softmax():
    torch.manual_seed(0)
    model = TwoTower([5], [13, 4, 6], embed_dim=4, hidden=8, out_dim=4)
    users = [torch.randint(1, 5, (12, 1))]
    items = _items()
    q = torch.nn.functional.normalize(model.query_tower(users), dim=1)
    x = torch.nn.functional.normalize(model.item_tower(items), dim=1)
    logits = q @ x.T / 0.1
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(12))
    torch.testing.assert_close(model.loss(users, items, tau=0.1), expected)
    assert model.scores(users, items).shape == (12, 12)
    # logQ correction: zero log-probabilities change nothing; otherwise logits shift per item
    torch.testing.assert_close(model.loss(users, items, tau=0.1, log_q=torch.zeros(12)), expected)
    log_q = torch.linspace(-3, -1, 12)
    corrected = torch.nn.functional.cross_entropy(logits - log_q[None, :], torch.arange(12))
    torch.testing.assert_close(model.loss(users, items, tau=0.1, log_q=log_q), corrected)
    with pytest.raises(PriorlabError):
        model.loss(users, items, log_q=torch.zeros(5))


def test_ssl_term_changes_training_only_through_alpha():
    """alpha = 0 leaves the item tower's training as the baseline's; alpha > 0 changes it."""
    users, items = [torch.randint(1, 5, (12, 1))], _items()

    def train(alpha):
        torch.manual_seed(0)
        model = TwoTower([5], [13, 4, 6], embed_dim=4, hidden=8, out_dim=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            masks = random_feature_masking(3, 12, torch.Generator().manual_seed(1))
            loss = model.loss(users, items)
            if alpha is not None:
                loss = loss + alpha * item_ssl_loss(model.item_tower, items, masks)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    base, zero, ssl = train(None), train(0.0), train(1.0)
    assert all(torch.equal(a, b) for a, b in zip(base, zero))
    assert any(not torch.allclose(a, b) for a, b in zip(base, ssl))


@pytest.mark.parametrize("bad", [
    lambda: random_feature_masking(1, 3),
    lambda: random_feature_masking(4, -1),
    lambda: correlated_feature_masking(np.ones((3, 2)), 4),
    lambda: correlated_feature_masking(-np.ones((3, 3)), 4),
    lambda: apply_feature_mask(_items(), torch.zeros(12, 3)),  # float mask
    lambda: apply_feature_mask([], torch.zeros(12, 3, dtype=torch.bool)),
    lambda: apply_feature_mask(_items(), torch.zeros(12, 3, dtype=torch.bool), dropout=-0.1),
    lambda: feature_mutual_information(np.zeros((0, 3), dtype=np.int64)),
    lambda: item_ssl_loss(FeatureTower([13, 4, 6]), _items(), random_feature_masking(3, 12), tau=0.0),
    lambda: FeatureTower([13, 4, 6])([torch.ones(2, 1, dtype=torch.long)]),
    lambda: FeatureTower([13, 4], hidden=0),
])
def test_bad_input_raises_a_clear_error(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_movielens_split_is_disjoint_chronological_and_popularity_from_train():
    data = load_movielens_100k()
    assert (data.n_users, data.n_items) == (943, 1682)
    assert len(data.train) + len(data.val) + len(data.test) == 100_000
    keys = [(p[:, 0] * data.n_items + p[:, 1]).numpy() for p in (data.train, data.val, data.test)]
    assert len(np.unique(np.concatenate(keys))) == 100_000  # no (user, item) pair in two splits
    assert torch.equal(data.popularity, torch.bincount(data.train[:, 1], minlength=data.n_items))
    head = data.head_items(0.1)
    assert int(head.sum()) == math.ceil(0.1 * data.n_items)
    assert data.popularity[head].min() >= data.popularity[~head].max()
    assert [t.shape[0] for t in data.items.tokens] == [data.n_items] * len(data.items.names)
    assert all(int(t.max()) < v for t, v in zip(data.items.tokens, data.items.vocab_sizes))
    with pytest.raises(PriorlabError):
        data.head_items(1.5)


def test_bad_tower_tokens_and_arguments_raise_a_clear_error():
    tower = FeatureTower([13, 4, 6], embed_dim=4, hidden=8, out_dim=4)
    items = _items()
    masks = random_feature_masking(3, 12)
    bad = [items[0].clone()] + items[1:]
    bad[0][0, 0] = -1  # outside the vocabulary: embedding_bag's message named no argument (fuzz)
    with pytest.raises(PriorlabError, match="features"):
        item_ssl_loss(tower, bad, masks)
    with pytest.raises(PriorlabError, match="item_tower"):
        item_ssl_loss(1.5, items, masks)
    with pytest.raises(PriorlabError, match="features"):
        item_ssl_loss(tower, [items[0][:, 0]] + items[1:], masks)
    with pytest.raises(PriorlabError, match="mutual_information"):
        correlated_feature_masking(None, 4)
