"""NeTI (paper 48): the space-time mapper, the textual bypass and per-layer cross-attention."""

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.methods.neti import _tiny_unet
from priorlab.nn.neti import (
    NETI_KWARG,
    NeTIConditionedUNet,
    NeTIMapper,
    add_textual_bypass,
    cross_attention_names,
    install_neti_processors,
    neti_conditioning,
    remove_neti_processors,
)

DIM = 16


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return _tiny_unet().eval().requires_grad_(False)


def _mapper(**kwargs):
    kwargs = {"norm_scale": 2.0, "num_frequencies": 64, "hidden_dim": 32, **kwargs}
    return NeTIMapper(DIM, 4, **kwargs).eval()


def _encode(embeddings):
    """A stand-in text encoder: fixed words, the placeholder at position 1, a causal-free tanh."""
    generator = torch.Generator().manual_seed(1)
    words = torch.randn(1, 5, DIM, generator=generator).expand(len(embeddings), -1, -1)
    words = torch.cat([words[:, :1], embeddings[:, None], words[:, 2:]], dim=1)
    return torch.tanh(words.cumsum(1)), torch.ones(len(embeddings), dtype=torch.long)


def test_mapper_output_shapes_and_norm():
    mapper = _mapper()
    t, layer = torch.tensor([0.0, 500.0, 999.0]), torch.tensor([0, 2, 3])
    embedding, bypass = mapper(t, layer)
    assert embedding.shape == bypass.shape == (3, DIM)
    # as the official code: the concatenated [embedding, bypass] is rescaled to norm_scale
    torch.testing.assert_close(torch.cat([embedding, bypass], 1).norm(dim=1), torch.full((3,), 2.0))
    plain, none = _mapper(bypass=False)(t, layer)
    assert none is None
    torch.testing.assert_close(plain.norm(dim=1), torch.full((3,), 2.0))


def test_anchor_layer_starts_as_similarity_to_the_anchors():
    mapper = _mapper()
    # anchors are (t, l) for t in 0, 100, ..., 900 and every layer, layer-fastest
    features = mapper.encode(torch.tensor([300.0]), torch.tensor([2]))
    torch.testing.assert_close(features.norm(dim=1), torch.ones(1))
    similarity = features @ mapper.anchor_layer.weight.T
    assert int(similarity.argmax()) == 3 * 4 + 2
    torch.testing.assert_close(similarity.max(), torch.tensor(1.0))


def test_output_varies_with_time_and_layer_unlike_one_embedding():
    mapper = _mapper()
    e = mapper(torch.tensor([100.0, 800.0, 100.0]), torch.tensor([0, 0, 3]))[0]
    assert not torch.allclose(e[0], e[1]) and not torch.allclose(e[0], e[2])


def test_nested_dropout_and_truncation():
    t, layer = torch.tensor([10.0, 700.0]), torch.tensor([1, 2])
    mapper = _mapper(nested_dropout_prob=1.0)
    full = mapper(t, layer)[0]
    torch.testing.assert_close(mapper(t, layer, truncation=32)[0], full)  # all units kept
    assert not torch.allclose(mapper(t, layer, truncation=4)[0], full)
    torch.manual_seed(0)
    assert not torch.allclose(mapper.train()(t, layer)[0], full)  # p = 1: always truncated
    mapper_off = _mapper(nested_dropout_prob=0.0)
    torch.testing.assert_close(mapper_off.train()(t, layer)[0], mapper_off.eval()(t, layer)[0])
    mask = _mapper(nested_dropout_prob=1.0)._nested_dropout_mask(50)
    # each row keeps a prefix of the units and drops the rest
    assert torch.equal(mask, mask.cummin(dim=1).values) and not mask.all()


def test_state_dict_round_trip_includes_the_frequencies():
    a, b = _mapper(seed=0), _mapper(seed=1)
    b.load_state_dict(a.state_dict())
    t, layer = torch.tensor([5.0, 600.0]), torch.tensor([0, 3])
    torch.testing.assert_close(a(t, layer)[0], b(t, layer)[0])


def test_textual_bypass_known_values():
    states = torch.randn(2, 4, 3)
    positions, bypass = torch.tensor([1, 3]), torch.tensor([[3.0, 0.0, 4.0], [0.0, 2.0, 0.0]])
    out = add_textual_bypass(states, positions, bypass, scale=0.2)
    for row, pos in enumerate(positions.tolist()):
        h = states[row, pos]
        torch.testing.assert_close(out[row, pos], h + 0.2 * h.norm() * bypass[row] / bypass[row].norm())
        keep = [i for i in range(4) if i != pos]
        torch.testing.assert_close(out[row, keep], states[row, keep])
    torch.testing.assert_close(add_textual_bypass(states, positions, bypass, scale=0.0), states)


def test_cross_attention_layers_in_execution_order(unet):
    names = cross_attention_names(unet)
    assert [n.split(".")[0] for n in names] == ["down_blocks", "mid_block", "up_blocks", "up_blocks"]


def test_processor_with_shared_states_equals_the_plain_unet(unet):
    torch.manual_seed(0)
    x, t, context = torch.randn(2, 1, 8, 8), torch.tensor([10, 700]), torch.randn(2, 5, DIM)
    plain = unet(x, t, encoder_hidden_states=context).sample
    install_neti_processors(unet)
    try:
        same = unet(x, t, encoder_hidden_states=context,
                    cross_attention_kwargs={NETI_KWARG: [(context, context)] * 4}).sample
        torch.testing.assert_close(same, plain, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=context).sample, plain)
        other = torch.randn(2, 5, DIM)
        for layer in range(4):  # each layer reads its own keys and values
            states = [(context, context)] * 4
            states[layer] = (context, other)
            assert not torch.allclose(unet(x, t, encoder_hidden_states=context,
                                           cross_attention_kwargs={NETI_KWARG: states}).sample, plain)
        with pytest.raises(PriorlabError, match="per-layer states"):
            unet(x, t, encoder_hidden_states=context,
                 cross_attention_kwargs={NETI_KWARG: [(context, context)]})
    finally:
        remove_neti_processors(unet)
    assert not any(type(p).__name__ == "NeTIAttnProcessor" for p in unet.attn_processors.values())


def test_conditioned_unet_keeps_unconditional_rows_and_trains_only_the_mapper(unet):
    torch.manual_seed(0)
    mapper = _mapper().train()
    x, t, context = torch.randn(4, 1, 8, 8), torch.tensor(500), torch.randn(4, 5, DIM)
    plain = unet(x[:2], t, encoder_hidden_states=context[:2]).sample
    model = NeTIConditionedUNet(unet, mapper, _encode, n_prompts=2)
    try:
        out = model(x, t, context).sample
        torch.testing.assert_close(out[:2], plain, rtol=1e-5, atol=1e-6)  # unconditional rows
        F.mse_loss(out[2:], torch.zeros_like(out[2:])).backward()
        grads = [p.grad for p in mapper.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        assert all(p.grad is None for p in unet.parameters())
    finally:
        remove_neti_processors(unet)


def test_neti_conditioning_bypass_goes_to_values_only():
    mapper = _mapper()
    layers = neti_conditioning(mapper, _encode, torch.tensor([100.0, 900.0]))
    assert len(layers) == 4
    for keys, values in layers:
        assert keys.shape == values.shape == (2, 5, DIM)
        torch.testing.assert_close(keys[:, [0, 2, 3, 4]], values[:, [0, 2, 3, 4]])
        assert not torch.allclose(keys[:, 1], values[:, 1])
    no_bypass = neti_conditioning(_mapper(bypass=False), _encode, torch.tensor([100.0]))
    assert all(torch.equal(k, v) for k, v in no_bypass)


def test_bad_inputs_raise(unet):
    mapper = _mapper()
    with pytest.raises(PriorlabError, match="timesteps"):
        mapper(torch.tensor([-1.0]), torch.tensor([0]))
    with pytest.raises(PriorlabError, match="layers"):
        mapper(torch.tensor([1.0, 2.0]), torch.tensor([0]))
    with pytest.raises(PriorlabError, match="layers"):
        mapper(torch.tensor([1.0]), torch.tensor([0.5]))
    with pytest.raises(PriorlabError, match="num_time_anchors"):
        NeTIMapper(DIM, 4, num_time_anchors=2000)
    with pytest.raises(PriorlabError, match="rows"):
        neti_conditioning(mapper, lambda e: _encode(e[:1]), torch.tensor([1.0, 2.0]))
    with pytest.raises(PriorlabError, match="bypass"):
        add_textual_bypass(torch.randn(2, 4, 3), torch.tensor([0, 1]), torch.randn(2, 4))
    with pytest.raises(PriorlabError, match="UNet2DConditionModel"):
        install_neti_processors(torch.nn.Linear(2, 2))
    model = NeTIConditionedUNet(unet, mapper, _encode, n_prompts=3)
    try:
        with pytest.raises(PriorlabError, match="batch of 2"):
            model(torch.randn(2, 1, 8, 8), torch.tensor(5), torch.randn(2, 5, DIM))
    finally:
        remove_neti_processors(unet)
