import math

import pytest
import torch
from scipy.stats import beta, norm

from priorlab.errors import PriorlabError
from priorlab.robust.smoothing import ABSTAIN, certify, clopper_pearson_lower, predict


class Constant(torch.nn.Module):
    def __init__(self, label, num_classes=4):
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x):
        out = torch.zeros(len(x), self.num_classes)
        out[:, self.label] = 1.0
        return out


class SignOfFirstPixel(torch.nn.Module):
    def forward(self, x):
        first = x.reshape(len(x), -1)[:, 0]
        return torch.stack([-first, first], dim=1)


@pytest.mark.parametrize("k,n,alpha", [(90, 100, 0.001), (1, 10, 0.05), (500, 500, 0.001)])
def test_clopper_pearson_matches_scipy_beta(k, n, alpha):
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(beta.ppf(alpha, k, n - k + 1))


def test_clopper_pearson_all_successes_closed_form():
    # with k = n the lower bound is alpha^(1/n)
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0


def test_certify_constant_classifier_gives_closed_form_radius():
    sigma, n, alpha = 0.5, 200, 0.001
    label, radius = certify(Constant(2), torch.zeros(3, 3), sigma, n0=10, n=n, alpha=alpha,
                            batch=64, generator=torch.Generator().manual_seed(0))
    assert label == 2
    assert radius == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)))


def test_certify_abstains_on_a_coin_flip_and_predict_too():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 2, 2)  # first pixel 0: the noisy sign is a fair coin
    assert certify(SignOfFirstPixel(), x, 1.0, 10, 400, 0.001, 100, gen) == (ABSTAIN, 0.0)
    assert predict(SignOfFirstPixel(), x, 1.0, 400, 0.001, 100, gen) == ABSTAIN


def test_certify_radius_matches_gaussian_probability_for_a_linear_classifier():
    # f = sign of first pixel, x_0 = 0.5, sigma 1: P(correct) = Phi(0.5); the smoothed radius is
    # at most sigma * Phi^-1(pA) = 0.5 and close to it with many samples
    x = torch.zeros(1, 2, 2)
    x[0, 0, 0] = 0.5
    label, radius = certify(SignOfFirstPixel(), x, 1.0, 50, 20000, 0.001, 5000,
                            torch.Generator().manual_seed(1))
    assert label == 1 and 0.4 < radius < 0.5


def test_predict_constant_classifier():
    assert predict(Constant(1), torch.zeros(5), 0.25, 50, 0.001, 16) == 1


@pytest.mark.parametrize("call", [
    lambda: certify(Constant(0), torch.zeros(3), -0.5, 10, 100, 0.001, 10),
    lambda: certify(Constant(0), torch.zeros(3), 0.5, 0, 100, 0.001, 10),
    lambda: certify(Constant(0), torch.zeros(3), 0.5, 10, 100, 1.5, 10),
    lambda: certify(Constant(0), torch.tensor([1.0, math.nan]), 0.5, 10, 100, 0.001, 10),
    lambda: predict(Constant(0), torch.zeros(3), 0.5, 100, 0.001, 0),
    lambda: clopper_pearson_lower(11, 10, 0.01),
])
def test_bad_arguments_raise(call):
    with pytest.raises(PriorlabError):
        call()
