"""Procedural shapes (priorlab.data.shapes) and InfoMEC (priorlab.diagnostics.disentangle)."""

import numpy as np
import pytest
import torch

from priorlab.data.shapes import FACTOR_NAMES, FACTOR_SIZES, procedural_shapes, render_shapes
from priorlab.diagnostics.disentangle import info_mec
from priorlab.errors import PriorlabError


@pytest.fixture(scope="module")
def shapes():
    return procedural_shapes(1500, size=16, seed=3)


def test_generator_is_seeded_and_well_formed(shapes):
    again = procedural_shapes(1500, size=16, seed=3)
    assert torch.equal(shapes.images, again.images) and torch.equal(shapes.factors, again.factors)
    assert not torch.equal(procedural_shapes(50, size=16, seed=4).factors, shapes.factors[:50])
    assert shapes.images.shape == (1500, 1, 16, 16) and shapes.images.dtype == torch.float32
    assert shapes.factors.dtype == torch.int64 and shapes.factors.shape == (1500, 5)
    assert 0 <= shapes.images.min() and shapes.images.max() <= 1
    assert shapes.factor_names == FACTOR_NAMES and shapes.factor_sizes == FACTOR_SIZES
    for k, size in enumerate(FACTOR_SIZES):  # every value of every factor appears
        assert set(shapes.factors[:, k].tolist()) == set(range(size))


def test_render_matches_and_each_factor_changes_the_image(shapes):
    assert torch.equal(shapes.render(shapes.factors[:20]), shapes.images[:20])
    base = np.array([[1, 3, 2, 3, 4]])
    for k in range(5):
        other = base.copy()
        other[0, k] = (other[0, k] + 1) % FACTOR_SIZES[k]
        assert not torch.equal(render_shapes(base, size=32), render_shapes(other, size=32)), k
    # larger scale, more ink; position x moves the centre of mass right
    small, large = render_shapes(np.array([[0, 0, 0, 3, 3], [0, 5, 0, 3, 3]]), size=32)
    assert large.sum() > 2 * small.sum()
    left, right = render_shapes(np.array([[1, 3, 0, 0, 3], [1, 3, 0, 7, 3]]), size=32)
    cols = torch.arange(32.0)
    assert (right.sum(dim=(0, 1)) @ cols) / right.sum() > (left.sum(dim=(0, 1)) @ cols) / left.sum() + 5


def test_render_rejects_bad_factors():
    with pytest.raises(PriorlabError, match="shape"):
        render_shapes(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(PriorlabError, match="orientation"):
        render_shapes(np.array([[0, 0, 8, 0, 0]]))
    with pytest.raises(PriorlabError, match="integer"):
        render_shapes(np.zeros((2, 5)))
    with pytest.raises(PriorlabError, match="n"):
        procedural_shapes(0)


def test_infomec_perfect_latents_score_one(shapes):
    scores = info_mec(shapes.factors, shapes.factors, shapes.factor_sizes)
    assert scores["discrete_latents"]
    for key in ("info_m", "info_e", "info_c"):
        assert scores[key] > 0.95, (key, scores[key])
    # continuous, rescaled and shifted copies of the factors: still ~1 (k-NN MI path)
    noisy = shapes.factors.float() * torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0]) + 7
    continuous = info_mec(noisy + 0.01 * torch.randn(noisy.shape), shapes.factors)
    assert not continuous["discrete_latents"]
    assert continuous["info_m"] > 0.9 and continuous["info_e"] > 0.9 and continuous["info_c"] > 0.9


def test_infomec_random_and_mixed_latents(shapes):
    torch.manual_seed(0)
    random = info_mec(torch.randn(1500, 10), shapes.factors)
    assert random["info_e"] < 0.05 and random["nmi"].max() < 0.05
    # a rotation mixes every factor into every latent: explicit but neither modular nor compact
    rotation = torch.linalg.qr(torch.randn(5, 5))[0]
    mixed = info_mec(shapes.factors.float() @ rotation, shapes.factors)
    assert mixed["info_e"] > 0.9 and mixed["info_m"] < 0.6 and mixed["info_c"] < 0.6
    # duplicating each latent keeps modularity, halves compactness
    twice = info_mec(torch.cat([shapes.factors, shapes.factors], 1), shapes.factors)
    assert twice["info_m"] > 0.95 and 0.3 < twice["info_c"] < 0.7
    # a constant extra latent is inactive and changes nothing
    padded = info_mec(torch.cat([shapes.factors, torch.zeros(1500, 1, dtype=torch.int64)], 1),
                      shapes.factors)
    assert padded["active_latents"].tolist() == [True] * 5 + [False]
    assert abs(padded["info_m"] - info_mec(shapes.factors, shapes.factors)["info_m"]) < 1e-9


def test_infomec_rejects_bad_input(shapes):
    z, f = torch.randn(1500, 3), shapes.factors
    with pytest.raises(PriorlabError, match="finite"):
        info_mec(torch.full((1500, 3), float("nan")), f)
    with pytest.raises(PriorlabError, match="samples"):
        info_mec(z[:10], f)
    with pytest.raises(PriorlabError, match="integer"):
        info_mec(z, f.float())
    with pytest.raises(PriorlabError, match="shape"):
        info_mec(z[:, 0], f)
    with pytest.raises(PriorlabError, match="2 factors"):
        info_mec(z, f[:, :1])
    with pytest.raises(PriorlabError, match="single value"):
        info_mec(z, torch.cat([f[:, :2], torch.zeros(1500, 1, dtype=torch.int64)], 1))
    with pytest.raises(PriorlabError, match="factor_sizes"):
        info_mec(z, f, (3, 6))
    with pytest.raises(PriorlabError, match="indices"):
        info_mec(z, f, (2, 6, 8, 8, 8))
    with pytest.raises(PriorlabError, match="n_neighbors"):
        info_mec(z, f, n_neighbors=0)
