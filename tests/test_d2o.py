"""D2O (seed 9): the loss from sequence log-ratios, the causal-LM log-prob helper, the reproduction's
pieces."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.functional.dispreference import d2o_loss, sequence_logprobs, token_logprobs
from priorlab.llm import tiny_llama
from priorlab.reproductions import p009_d2o


def _tiny():
    return tiny_llama(vocab_size=32, hidden=16, layers=1, heads=2, intermediate=32, seed=0)


def test_known_value():
    policy_samples = torch.tensor([[1.0, 3.0]])
    ref_samples = torch.tensor([[0.0, 0.0]])
    policy_negative, ref_negative = torch.tensor([-2.0]), torch.tensor([0.0])
    loss = d2o_loss(policy_samples, ref_samples, policy_negative, ref_negative, beta=0.5, alpha=0.25)
    # beta/K sum = 0.5 * (1 + 3) / 2 = 1; - alpha * (-2) = 0.5; -log sigmoid(1.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))), rel=1e-6)


def test_k1_alpha_equal_beta_is_dpo():
    generator = torch.Generator().manual_seed(0)
    pw, rw, pl, rl = (torch.randn(5, generator=generator) for _ in range(4))
    beta = 0.3
    dpo = -F.logsigmoid(beta * ((pw - rw) - (pl - rl))).mean()
    d2o = d2o_loss(pw[:, None], rw[:, None], pl, rl, beta=beta, alpha=beta)
    torch.testing.assert_close(d2o, dpo)


def test_equals_log2_at_the_reference_and_reductions():
    zeros = torch.zeros(3, 4)
    loss = d2o_loss(zeros, zeros, zeros[:, 0], zeros[:, 0], reduction="none")
    torch.testing.assert_close(loss, torch.full((3,), math.log(2.0)))
    total = d2o_loss(zeros, zeros, zeros[:, 0], zeros[:, 0], reduction="sum")
    assert total.item() == pytest.approx(3 * math.log(2.0))


def test_gradient_pushes_negative_down_and_anchors_up():
    samples = torch.zeros(2, 3, requires_grad=True)
    negative = torch.zeros(2, requires_grad=True)
    d2o_loss(samples, torch.zeros(2, 3), negative, torch.zeros(2)).backward()
    assert (negative.grad > 0).all() and (samples.grad < 0).all()  # descent lowers y_l, raises y_i
    assert torch.isfinite(samples.grad).all()


@pytest.mark.parametrize("bad", [
    dict(beta=0.0), dict(alpha=-0.1), dict(beta=float("inf")), dict(reduction="avg"), dict(alpha="a"),
])
def test_bad_hyperparameters(bad):
    z = torch.zeros(2, 3)
    with pytest.raises(PriorlabError):
        d2o_loss(z, z, z[:, 0], z[:, 0], **bad)


def test_bad_shapes_and_values():
    z = torch.zeros(2, 3)
    with pytest.raises(PriorlabError, match="reference_sample_logps"):
        d2o_loss(z, z[:, :2], z[:, 0], z[:, 0])
    with pytest.raises(PriorlabError, match="policy_negative_logps"):
        d2o_loss(z, z, z[:1, 0], z[:, 0])
    with pytest.raises(PriorlabError, match="finite"):
        d2o_loss(z, z, torch.tensor([0.0, float("nan")]), z[:, 0])
    with pytest.raises(PriorlabError):
        d2o_loss(z.long(), z, z[:, 0], z[:, 0])


def test_sequence_logprobs_matches_manual_and_ignores_left_padding():
    model = _tiny()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    response = torch.tensor([[0, 0, 0, 1, 1]])
    logps = sequence_logprobs(model, ids, torch.ones_like(ids), response)
    with torch.no_grad():
        log_softmax = torch.log_softmax(model(ids).logits, dim=-1)
    manual = log_softmax[0, 2, 8] + log_softmax[0, 3, 9]
    torch.testing.assert_close(logps, manual[None].detach(), rtol=1e-5, atol=1e-5)
    padded = torch.tensor([[0, 0, 5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    padded_logps = sequence_logprobs(model, padded, mask, torch.tensor([[0, 0, 0, 0, 0, 1, 1]]))
    torch.testing.assert_close(padded_logps, logps, rtol=1e-4, atol=1e-4)
    tokens = token_logprobs(model, ids, torch.ones_like(ids), response)
    assert tokens.shape == (1, 4) and (tokens[0, :2] == 0).all()


def test_sequence_logprobs_bad_masks():
    model = _tiny()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(PriorlabError, match="padding"):
        sequence_logprobs(model, ids, torch.tensor([[1, 1, 0]]), torch.tensor([[0, 0, 1]]))
    with pytest.raises(PriorlabError, match="first token"):
        sequence_logprobs(model, ids, torch.ones_like(ids), torch.tensor([[1, 0, 0]]))
    with pytest.raises(PriorlabError):
        sequence_logprobs(model, ids.float(), torch.ones_like(ids), torch.ones_like(ids))


def test_training_moves_away_from_negative_and_only_trainable_params_change():
    policy = _tiny()
    reference = copy.deepcopy(policy).requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(32, (6, 8), generator=generator)  # 2 prompts x (2 anchors + 1 negative)
    attention, response = torch.ones_like(ids), torch.zeros_like(ids)
    response[:, 4:] = 1
    with torch.no_grad():
        ref = sequence_logprobs(reference, ids, attention, response).view(2, 3)
    params = p009_d2o._trainable(policy, 1)
    frozen_before = policy.model.embed_tokens.weight.clone()
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(10):
        logps = sequence_logprobs(policy, ids, attention, response).view(2, 3)
        loss = d2o_loss(logps[:, :2], ref[:, :2], logps[:, 2], ref[:, 2], beta=0.5, alpha=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = sequence_logprobs(policy, ids, attention, response).view(2, 3)
    assert (after[:, 2] < ref[:, 2]).all()
    assert loss.item() < math.log(2.0)
    torch.testing.assert_close(policy.model.embed_tokens.weight, frozen_before)


def test_top_layers_on_cached_hidden_equal_the_whole_model():
    model = tiny_llama(vocab_size=32, hidden=16, layers=3, heads=2, intermediate=32, seed=0)
    ids = torch.tensor([[0, 3, 4, 5, 6], [7, 8, 9, 10, 11]])
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]),
             "response_mask": torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]])}
    whole = sequence_logprobs(model, **batch)
    hidden = p009_d2o.lower_hidden(model, batch, n_top=2)
    with p009_d2o.top_layers(model, 2) as top:
        assert len(top.model.layers) == 2
        from_cache = token_logprobs(top, **batch, inputs_embeds=hidden).sum(dim=1)
    assert len(model.model.layers) == 3
    torch.testing.assert_close(from_cache, whole, rtol=1e-5, atol=1e-5)


def test_is_dispreferred_matches_whole_words():
    words = p009_d2o.BANNED_WORDS
    assert p009_d2o.is_dispreferred("I'm fine", words)
    assert p009_d2o.is_dispreferred("That annoys ME.", words)
    assert not p009_d2o.is_dispreferred("it is impossible, isn't it", words)
    assert not p009_d2o.is_dispreferred("my", ("myx",))


def test_sft_away_loss_known_value():
    anchor = torch.log(torch.tensor([[0.5, 0.25]]))
    negative = torch.log(torch.tensor([[0.5, 0.0 + 1e-9]]))
    mask = torch.ones(1, 2)
    loss = p009_d2o.sft_away_loss(anchor, mask, negative, torch.tensor([[1.0, 0.0]]))
    expected = (math.log(2) + math.log(4)) / 2 + math.log(2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_reproduction_arms_differ_on_smoke_config():
    cfg = p009_d2o.CLAIM.tiers["smoke"]
    reference = p009_d2o.run("reference", cfg, 0)
    d2o = p009_d2o.run("d2o", cfg, 0)
    assert reference.metrics["negative_logratio"] == 0.0
    assert d2o.metrics["negative_logratio"] < 0.0
    assert d2o.metrics["log_perplexity"] != reference.metrics["log_perplexity"]
    with pytest.raises(PriorlabError):
        p009_d2o.run("d2oo", cfg, 0)
