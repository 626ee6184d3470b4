"""PFNR (paper 54): winning masks, the Fourier subneural operator, and lossless sessions."""

import math

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.fields.pfnr import PFNR, FourierSubOperator, SubnetWeight, positional_embedding, winning_mask


def _model(capacity=0.5, fso_block=1, sessions=2):
    torch.manual_seed(0)
    return PFNR(frame_size=(8, 16), base_size=(2, 4), base_channels=8, widths=(8, 8), strides=(2, 2),
                stem_hidden=32, embed_levels=8, sessions=sessions, capacity=capacity, fso_block=fso_block)


def _train(model, session, video, steps=5):
    t = torch.arange(len(video)) / len(video)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.5, 0.999))
    for _ in range(steps):
        loss = F.mse_loss(model(t, session), video)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.end_session(session)
    return t


def _videos():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(4, 3, 8, 16, generator=generator) for _ in range(3)]


def test_winning_mask_keeps_largest_magnitudes_with_straight_through_gradient():
    scores = torch.tensor([0.1, -3.0, 2.0, 0.5], requires_grad=True)
    mask = winning_mask(scores, 0.5)
    assert mask.tolist() == [0.0, 1.0, 1.0, 0.0]
    (mask * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    # d|s|/ds = sign(s), the mask passes the gradient through
    assert scores.grad.tolist() == [1.0, -2.0, 3.0, 4.0]
    assert winning_mask(torch.randn(10), 0.01).sum() == 1  # at least one entry
    assert winning_mask(torch.randn(10), 1.0).sum() == 10


def test_positional_embedding_known_values():
    out = positional_embedding(torch.tensor([0.0, 1.0]), levels=2, base=2.0)
    assert out.shape == (2, 4)
    assert torch.allclose(out[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    # t = 1: angles pi and 2 pi
    assert torch.allclose(out[1], torch.tensor([0.0, -1.0, 0.0, 1.0]), atol=1e-6)


def test_fso_with_unit_weights_is_identity_and_upsamples_constants():
    x = torch.randn(2, 1, 6, 8)
    layer = FourierSubOperator(1, 1, (6, 8), 1, capacity=None, sessions=1)
    with torch.no_grad():
        layer.real.weight.fill_(1.0)
        layer.imag.weight.zero_()
    assert torch.allclose(layer(x, 0, 0), x, atol=1e-5)
    up = FourierSubOperator(1, 1, (6, 8), 2, capacity=None, sessions=1)
    with torch.no_grad():
        up.real.weight.fill_(1.0)
        up.imag.weight.zero_()
    out = up(torch.full((1, 1, 6, 8), 0.7), 0, 0)
    assert out.shape == (1, 1, 12, 16) and torch.allclose(out, torch.full_like(out, 0.7), atol=1e-5)


def test_output_shape_range_and_finite_gradients():
    model = _model()
    out = model(torch.linspace(0, 1, 3), 0)
    assert out.shape == (3, 3, 8, 16) and 0 <= float(out.detach().min()) and float(out.detach().max()) <= 1
    out.mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.heads[1].weight.grad is None  # only the session's own head is used


@pytest.mark.parametrize("fso_block", [None, 1])
def test_earlier_sessions_decode_exactly_after_later_sessions(fso_block):
    model, videos = _model(fso_block=fso_block, sessions=3), _videos()
    t = _train(model, 0, videos[0])
    with torch.no_grad():
        before = model(t, 0)
    frozen = {id(w): (w.weight.detach().clone(), w.frozen.clone()) for w in model.subnet_weights()}
    _train(model, 1, videos[1])
    _train(model, 2, videos[2])
    with torch.no_grad():
        assert torch.equal(model(t, 0), before)
    moved_free = False
    for w in model.subnet_weights():
        weight, was_frozen = frozen[id(w)]
        assert torch.equal(w.weight[was_frozen], weight[was_frozen])  # frozen weights never move
        moved_free |= not torch.equal(w.weight[~was_frozen], weight[~was_frozen])
    assert moved_free
    assert 0.5 <= model.used_capacity() < 1.0


def test_fine_tuning_forgets_and_stores_no_masks():
    model, videos = _model(capacity=None, fso_block=None), _videos()
    t = _train(model, 0, videos[0])
    with torch.no_grad():
        before = model(t, 0)
    _train(model, 1, videos[1])
    with torch.no_grad():
        assert not torch.allclose(model(t, 0), before)
    assert model.used_capacity() == 0.0


def test_masks_select_the_capacity_and_the_wsn_arm_differs_from_dense():
    model = _model(capacity=0.3)
    _train(model, 0, _videos()[0], steps=1)
    for w in model.subnet_weights():
        assert abs(float(w.masks[0].float().mean()) - 0.3) < 0.02
    dense, masked = _model(capacity=None, fso_block=1), _model(capacity=0.3, fso_block=1)
    t = torch.linspace(0, 1, 2)
    assert not torch.allclose(dense(t, 0), masked(t, 0))


def test_state_dict_round_trip_keeps_masks_and_sessions():
    model = _model()
    t = _train(model, 0, _videos()[0])
    copy = _model()
    copy.load_state_dict(model.state_dict())
    assert int(copy.finished) == 1
    with torch.no_grad():
        assert torch.equal(copy(t, 0), model(t, 0))


def test_bad_input():
    model = _model()
    with pytest.raises(PriorlabError, match="session 1 cannot start"):
        model(torch.zeros(2), 1)
    with pytest.raises(PriorlabError, match="session"):
        model(torch.zeros(2), 5)
    with pytest.raises(PriorlabError, match="t"):
        model(torch.zeros(2, 1), 0)
    with pytest.raises(PriorlabError):
        model(torch.tensor([math.nan]), 0)
    with pytest.raises(PriorlabError, match="in progress"):
        model.end_session(1)
    with pytest.raises(PriorlabError, match="capacity"):
        PFNR(capacity=0.0)
    with pytest.raises(PriorlabError, match="frame_size"):
        PFNR(frame_size=(30, 64))
    with pytest.raises(PriorlabError, match="fso_block"):
        PFNR(fso_block=3)
    with pytest.raises(PriorlabError, match="modes"):
        FourierSubOperator(2, 2, (4, 8), 2, 0.5, 1, modes=(4, 6))
    with pytest.raises(PriorlabError, match="capacity"):
        winning_mask(torch.randn(3), -0.1)
    assert isinstance(model.stem[0], SubnetWeight)
