import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.robust.attacks import fgsm, pgd


def _linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 3))


def test_fgsm_step_is_eps_sign_of_input_gradient_on_linear_model():
    model = _linear_model()
    x = torch.full((4, 6), 0.5)
    y = torch.tensor([0, 1, 2, 0])
    # d CE / dx = W^T (softmax - onehot): computed by hand from the linear model
    W = model[1].weight.detach()
    probs = torch.softmax(model(x), dim=1).detach()
    grad = (probs - torch.eye(3)[y]) @ W
    x_adv = fgsm(model, x, y, eps=0.1)
    assert torch.allclose(x_adv, x + 0.1 * grad.sign())


def test_fgsm_clamps_to_unit_interval():
    model = _linear_model()
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.02, 0.98]] * 3)
    x_adv = fgsm(model, x, torch.tensor([0, 1, 2]), eps=0.5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_stays_in_eps_ball_and_unit_interval_and_raises_loss():
    model = _linear_model()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 6, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    x_adv = pgd(model, x, y, eps=0.05, alpha=0.02, steps=10, random_start=True, generator=gen)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    loss = nn.functional.cross_entropy
    assert loss(model(x_adv), y) > loss(model(x), y)


def test_pgd_is_deterministic_given_generator():
    model = _linear_model()
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    runs = [pgd(model, x, y, 0.1, 0.03, 3, generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    assert torch.equal(*runs)


def test_pgd_without_random_start_one_step_equals_fgsm_when_alpha_is_eps():
    model = _linear_model()
    x, y = torch.rand(4, 6) * 0.5 + 0.25, torch.tensor([0, 1, 2, 0])
    assert torch.allclose(pgd(model, x, y, 0.1, 0.1, 1, random_start=False), fgsm(model, x, y, 0.1))


@pytest.mark.parametrize("call", [
    lambda m, x, y: fgsm(m, x, y, eps=-0.1),
    lambda m, x, y: fgsm(m, x * 3, y, eps=0.1),
    lambda m, x, y: fgsm(m, x, y.float(), eps=0.1),
    lambda m, x, y: pgd(m, x, y, 0.1, 0.0, 3),
    lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 0),
    lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 2, eot=0),
    lambda m, x, y: fgsm(m, x * float("nan"), y, 0.1),
])
def test_bad_arguments_raise(call):
    with pytest.raises(PriorlabError):
        call(_linear_model(), torch.rand(2, 6) * 0.3 + 0.1, torch.tensor([0, 1]))
