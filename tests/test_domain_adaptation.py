"""Continued pre-training (paper 51): BERT masking, the masked-LM loss, and the DANN baseline."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.data.text_domains import MASK, PAD, _blocks_of_comments, _docstrings, domain_texts
from priorlab.errors import PriorlabError
from priorlab.functional.domain_adaptation import (
    IGNORE_INDEX, GradientReversal, dann_lambda, dann_loss, mask_tokens, masked_lm_loss, reverse_gradient)
from priorlab.reproductions.p051_continued_pretraining import CLAIM, PromptClassifier, _masked_lm_phase


def _ids(n=200, length=50, vocab=1000, seed=0):
    return torch.randint(5, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def test_mask_tokens_follows_bert_80_10_10():
    ids = _ids()
    masked, labels = mask_tokens(ids, mask_token_id=MASK, vocab_size=1000,
                                 generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    assert torch.equal(masked[~chosen], ids[~chosen])  # unchosen tokens are untouched
    as_mask = (masked[chosen] == MASK).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03  # the rest (~10%) is random
    assert ids.min() >= 5  # the input was not modified in place


def test_mask_tokens_skips_special_positions_and_is_reproducible():
    ids = _ids(20, 10)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, :3] = True
    first = mask_tokens(ids, mask_token_id=MASK, vocab_size=1000, special_mask=special, probability=1.0,
                        mask_share=1.0, random_share=0.0, generator=torch.Generator().manual_seed(3))
    again = mask_tokens(ids, mask_token_id=MASK, vocab_size=1000, special_mask=special, probability=1.0,
                        mask_share=1.0, random_share=0.0, generator=torch.Generator().manual_seed(3))
    masked, labels = first
    assert torch.equal(masked, again[0]) and torch.equal(labels, again[1])
    assert (labels[:, :3] == IGNORE_INDEX).all() and torch.equal(masked[:, :3], ids[:, :3])
    assert (masked[:, 3:] == MASK).all()


def test_masked_lm_loss_is_cross_entropy_on_chosen_positions():
    logits = torch.randn(3, 4, 7, requires_grad=True)
    labels = torch.full((3, 4), IGNORE_INDEX)
    labels[0, 1], labels[2, 3] = 2, 5
    expected = F.cross_entropy(torch.stack([logits[0, 1], logits[2, 3]]), torch.tensor([2, 5]))
    assert torch.allclose(masked_lm_loss(logits, labels), expected)
    empty = masked_lm_loss(logits, torch.full((3, 4), IGNORE_INDEX))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -1.0))
    layer = GradientReversal(0.0)
    x.grad = None
    layer(x).sum().backward()
    assert (x.grad == 0).all()


def test_dann_lambda_ramp():
    assert dann_lambda(0.0) == 0.0
    assert math.isclose(dann_lambda(1.0), 2 / (1 + math.exp(-10)) - 1)
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1


def test_dann_loss_trains_the_discriminator_and_reverses_into_the_features():
    torch.manual_seed(0)
    discriminator = nn.Linear(3, 1)
    source, target = torch.randn(5, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    loss = dann_loss(source, target, discriminator, scale=1.0)
    plain = F.binary_cross_entropy_with_logits(discriminator(torch.cat([source, target])).squeeze(1),
                                               torch.tensor([0.0] * 5 + [1.0] * 4))
    assert torch.allclose(loss, plain)
    loss.backward()
    reversed_grad = source.grad.clone()
    weight_grad = discriminator.weight.grad.clone()
    source.grad = None
    discriminator.zero_grad()
    plain.backward()
    assert torch.allclose(reversed_grad, -source.grad)  # the encoder is pushed to confuse
    assert torch.allclose(weight_grad, discriminator.weight.grad)  # the discriminator learns normally


@pytest.mark.parametrize("call", [
    lambda: mask_tokens(torch.tensor([[1, 2, 30]]), mask_token_id=1, vocab_size=20),
    lambda: mask_tokens(torch.tensor([[1, 2]]), mask_token_id=1, vocab_size=20, probability=float("nan")),
    lambda: mask_tokens(torch.zeros(0, dtype=torch.long), mask_token_id=1, vocab_size=20),
    lambda: masked_lm_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long)),
    lambda: reverse_gradient(torch.zeros(2), float("inf")),
    lambda: dann_lambda(-0.1),
    lambda: dann_lambda(0.5, gamma=0.0),
    lambda: dann_loss(torch.zeros(2, 4), torch.zeros(2, 4), lambda f: f, 1.0),
    lambda: dann_loss(torch.zeros(2, 4), torch.zeros(2, 4), nn.Linear(4, 2), 1.0),
    lambda: dann_loss(torch.zeros(4), torch.zeros(2, 4), nn.Linear(4, 1), 1.0),
])
def test_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


def test_text_extraction_and_unknown_domain():
    source = 'def f():\n    """Return the parsed e-mail header value."""\n    # first line of a block\n' \
             '    # second line\n    x = 1  # separate comment\n'
    assert _docstrings(source) == ["Return the parsed e-mail header value."]
    assert _blocks_of_comments(source) == ["first line of a block second line", "separate comment"]
    with pytest.raises(PriorlabError, match="comment"):
        domain_texts("comments")


def test_continued_pretraining_trains_the_masked_lm_and_the_prompt_reads_the_topic_words():
    cfg = {**CLAIM.tiers["smoke"], "width": 16, "heads": 2, "mlm_batch_size": 8}
    torch.manual_seed(0)
    model = PromptClassifier(vocab_size=50, label_token_ids=(7, 9, 11), cfg=cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    texts = torch.randint(5, 50, (32, cfg["max_len"]), generator=torch.Generator().manual_seed(0))
    texts[:, 0], texts[:, -4:] = 2, PAD
    losses = _masked_lm_phase(model, texts, steps=5, cfg=cfg, generator=torch.Generator().manual_seed(0))
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert not torch.equal(before["mlm.bert.embeddings.word_embeddings.weight"],
                           model.state_dict()["mlm.bert.embeddings.word_embeddings.weight"])
    model.eval()
    logits = model(texts[:4])
    full = model.mlm.cls(model.features(texts[:4]))
    assert logits.shape == (4, 3) and torch.equal(logits, full[:, [7, 9, 11]])


def test_dann_loss_rejects_non_finite_features_and_mixed_dtypes():
    # fuzz findings: NaN features gave a NaN loss; float64 features with a float32
    # discriminator crashed in the matmul without naming the argument
    disc, source, target = nn.Linear(4, 1), torch.randn(3, 4), torch.randn(2, 4)
    bad = source.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(PriorlabError, match="source_features"):
        dann_loss(bad, target, disc, 1.0)
    with pytest.raises(PriorlabError, match="one dtype"):
        dann_loss(source, target.double(), disc, 1.0)
    with pytest.raises(PriorlabError, match="one dtype"):
        dann_loss(source.double(), target.double(), disc, 1.0)
