"""Beyond l1 sparse coding (seed 49): threshold operators, ISTA/FISTA, dictionary step, patches."""

import math

import numpy as np
import pytest
import torch

from priorlab.data.patches import sample_patches, whiten
from priorlab.errors import PriorlabError, UsageError
from priorlab.functional.sparse_coding import (
    PENALTIES,
    dictionary_image,
    dictionary_step,
    energy,
    lam_for_threshold,
    localisation,
    normalise_columns,
    orientation_selectivity,
    penalty_value,
    sparse_code,
    threshold,
)
from priorlab.reproductions import p049_sparse_coding


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_soft_and_hard_known_values():
    u = _t([-2.0, -0.5, 0.3, 0.99, 1.5])
    torch.testing.assert_close(threshold(u, "l1", lam=1.0), _t([-1.0, 0.0, 0.0, 0.0, 0.5]))
    # l0 with step * lam = 0.5 keeps |u| > sqrt(2 * 0.5) = 1
    torch.testing.assert_close(threshold(u, "l0", lam=1.0, step=0.5), _t([-2.0, 0, 0, 0, 1.5]))


def test_half_threshold_known_values():
    # t = 4 (Xu's lambda = 8): jump at (54^(1/3) / 4) * 8^(2/3) = 3.78; for u = 6 the value
    # 4 (1 + cos(2 pi / 3 - (2/3) arccos(2^(-3/2)))) = 5.11452 solves a - u + t / (2 sqrt(a)) = 0
    out = threshold(_t([3.0, 3.7, 6.0, -6.0]), "l_half", lam=4.0)
    expected = 4.0 * (1.0 + math.cos(2.0 * math.pi / 3.0 - (2.0 / 3.0) * math.acos(2.0 ** -1.5)))
    torch.testing.assert_close(out, _t([0.0, 0.0, expected, -expected]))
    assert abs(expected - 6.0 + 4.0 / (2.0 * math.sqrt(expected))) < 1e-12


def test_cel0_known_values():
    # lam 0.5, step 0.5, unit atom: zero for |u| <= sqrt(2 lam) step = 0.5, (|u| - 0.5) / 0.5
    # between, identity from |u| >= sqrt(2 lam) = 1
    out = threshold(_t([-0.3, 0.5, 0.8, 1.2, -2.0]), "cel0", lam=0.5, step=0.5)
    torch.testing.assert_close(out, _t([0.0, 0.0, 0.6, 1.2, -2.0]))


@pytest.mark.parametrize("penalty", PENALTIES)
def test_each_operator_is_the_global_minimiser_of_its_scalar_problem(penalty):
    u = torch.linspace(-3, 3, 61, dtype=torch.float64)
    grid = torch.cat([torch.linspace(-4, 4, 40001, dtype=torch.float64), _t([0.0])])
    lam, step = 0.5, 0.7
    penalty_on_grid = penalty_value(grid[:, None], penalty, lam)[None, :]
    cost = 0.5 * (grid[None, :] - u[:, None]) ** 2 + step * penalty_on_grid
    torch.testing.assert_close(threshold(u, penalty, lam, step), grid[cost.argmin(dim=1)],
                               atol=3e-4, rtol=0)


@pytest.mark.parametrize("penalty", PENALTIES)
def test_lam_for_threshold_sets_the_kill_point(penalty):
    lam = lam_for_threshold(penalty, 1.3)
    step = 0.999 if penalty == "cel0" else 1.0  # cel0's map needs step < 1; its kill is sqrt(2 lam) step
    kill = 1.3 * step if penalty == "cel0" else 1.3
    out = threshold(_t([kill - 1e-6, kill + 1e-3]), penalty, lam, step)
    assert out[0] == 0 and out[1] != 0


def _planted(seed=0, n_features=32, n_atoms=64, active=3):
    generator = torch.Generator().manual_seed(seed)
    dictionary = normalise_columns(torch.randn(n_features, n_atoms, generator=generator,
                                               dtype=torch.float64))
    codes = torch.zeros(4, n_atoms, dtype=torch.float64)
    for row in range(4):
        support = torch.randperm(n_atoms, generator=generator)[:active]
        codes[row, support] = 2.0 + torch.rand(active, generator=generator, dtype=torch.float64)
    return dictionary, codes, codes @ dictionary.T


@pytest.mark.parametrize("penalty", PENALTIES)
def test_ista_recovers_a_planted_sparse_code(penalty):
    dictionary, truth, x = _planted()
    lam = lam_for_threshold(penalty, 0.3)
    codes = sparse_code(x, dictionary, penalty=penalty, lam=lam, steps=800)
    torch.testing.assert_close(codes != 0, truth != 0)
    # l1 shrinks the amplitudes by about the kill (its bias), l1/2 by lam / (2 sqrt|a|), the
    # l0-like penalties not at all
    error = float((codes - truth).abs().max())
    if penalty == "l1":
        assert 0.2 < error < 0.6
    else:
        assert error < (0.1 if penalty == "l_half" else 1e-3)


def test_ista_and_fista_lower_the_energy_and_agree_for_l1():
    dictionary, _, x = _planted(seed=1)
    lam = 0.2
    zero = energy(x, dictionary, torch.zeros(4, 64, dtype=torch.float64), "l1", lam)
    slow = sparse_code(x, dictionary, penalty="l1", lam=lam, steps=3000, solver="ista")
    fast = sparse_code(x, dictionary, penalty="l1", lam=lam, steps=300)
    assert (energy(x, dictionary, fast, "l1", lam) < zero).all()
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)


def test_dictionary_step_keeps_unit_atoms_and_reduces_the_error():
    dictionary, codes, x = _planted(seed=2)
    noisy = normalise_columns(dictionary + 0.3 * torch.randn(dictionary.shape, dtype=torch.float64,
                                                             generator=torch.Generator().manual_seed(3)))
    before = ((x - codes @ noisy.T) ** 2).sum()
    updated = dictionary_step(x, noisy, codes, lr=0.05)
    torch.testing.assert_close(updated.norm(dim=0), torch.ones(64, dtype=torch.float64))
    assert ((x - codes @ updated.T) ** 2).sum() < before


def test_orientation_selectivity_and_localisation_tell_gratings_from_blobs():
    yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    grating = np.cos(2 * np.pi * 0.25 * (xx + 0.3 * yy))
    blob = np.exp(-((xx - 3.5) ** 2 + (yy - 3.5) ** 2) / 2.0)
    gabor = grating * np.exp(-((xx - 2) ** 2 + (yy - 2) ** 2) / 2.0)
    atoms = torch.tensor(np.stack([grating, blob, gabor]).reshape(3, 64).T)
    osi = orientation_selectivity(normalise_columns(atoms), 8)
    assert osi[0] > 0.8 and osi[1] < 0.1 and osi[2] > 0.5
    local = localisation(normalise_columns(atoms), 8, 5)
    assert local[0] < 0.6 and local[2] > 0.9


def test_dictionary_image_tiles_atoms_in_unit_range():
    image = dictionary_image(normalise_columns(torch.randn(64, 10)))
    assert image.shape == (3 * 9 - 1, 4 * 9 - 1)  # 10 atoms in 4 columns, 3 rows
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image[8, 0] == 1.0  # the gap row between tiles


def test_patches_are_whitened_deterministic_and_split():
    a = sample_patches("train", 50, size=8, seed=1).x
    torch.testing.assert_close(a, sample_patches("train", 50, size=8, seed=1).x)
    assert a.shape == (50, 64) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert not torch.equal(a, sample_patches("test", 50, size=8, seed=1).x)
    # whitening flattens a 1/f amplitude spectrum: a smooth ramp image loses its low frequencies
    ramp = np.add.outer(np.arange(64.0), np.arange(64.0))
    assert abs(whiten(ramp).std() - 1.0) < 1e-9


def test_bad_input_errors():
    u = _t([1.0])
    with pytest.raises(UsageError, match="did you mean 'l1'"):
        threshold(u, "l_1", lam=1.0)
    with pytest.raises(UsageError, match="did you mean 'l_half'"):
        sparse_code(torch.zeros(2, 4), torch.eye(4), penalty="half")
    with pytest.raises(UsageError, match="solver"):
        sparse_code(torch.zeros(2, 4), torch.eye(4), solver="adam")
    with pytest.raises(PriorlabError, match="lam"):
        threshold(u, "l1", lam=-1.0)
    with pytest.raises(PriorlabError, match="step"):
        threshold(u, "cel0", lam=1.0, step=1.0)
    with pytest.raises(PriorlabError, match="shape"):
        sparse_code(torch.zeros(2, 5), torch.eye(4))
    with pytest.raises(PriorlabError, match="NaN"):
        sparse_code(torch.full((2, 4), float("nan")), torch.eye(4))
    with pytest.raises(PriorlabError, match="steps"):
        sparse_code(torch.zeros(2, 4), torch.eye(4), steps=0)
    with pytest.raises(PriorlabError, match="not square"):
        dictionary_image(torch.randn(10, 3))
    with pytest.raises(UsageError, match="did you mean 'test'"):
        sample_patches("tset", 5)
    with pytest.raises(UsageError, match="did you mean 'l_half'"):
        p049_sparse_coding.run("l_halff", p049_sparse_coding.CLAIM.tiers["smoke"], 0)


def test_non_finite_and_degenerate_inputs_raise_a_clear_error():
    with pytest.raises(PriorlabError, match=r"\bu\b"):
        threshold(torch.tensor([[math.inf, 0.0]]), "l_half", 0.1)
    with pytest.raises(PriorlabError, match="column_norms"):  # one norm per atom (fuzz)
        threshold(torch.zeros(0), "cel0", 0.1, 0.5, torch.ones(2))
    x, d = torch.randn(2, 4), normalise_columns(torch.randn(4, 3))
    with pytest.raises(PriorlabError, match="dictionary"):  # step 1/||D||^2 overflows
        sparse_code(x, d * 1e-30, steps=5)
    with pytest.raises(PriorlabError, match=r"\bx\b"):
        sparse_code(x.half(), d.half(), steps=5)
