"""The shared VQ tokenizer + autoregressive generator pipeline (papers 15 and 50)."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.generative.autoregressive import TokenTransformer, pipeline_scores, train_generator
from priorlab.generative.tokenizer import (
    SIZES,
    VQTokenizer,
    pretrained_tokenizer,
    tokenizer_width,
    train_tokenizer,
    vq_loss,
)


def _images(n=8, seed=0):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_tokenize_decode_shapes_and_ranges():
    torch.manual_seed(0)
    tok = VQTokenizer(width=4, codebook_size=8, code_dim=4)
    tokens = tok.tokenize(_images())
    assert tokens.shape == (8, 16) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < 8
    images = tok.decode(tokens)
    assert images.shape == (8, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    # forward (straight-through) reconstructs exactly what decode(tokenize) gives
    torch.testing.assert_close(tok(_images()), images)


def test_straight_through_gradient_reaches_encoder_and_codebook():
    torch.manual_seed(0)
    tok = VQTokenizer(width=4, codebook_size=8, code_dim=4)
    loss, parts = vq_loss(tok, _images())
    loss.backward()
    assert set(parts) == {"recon", "codebook", "commit"}
    for name in ("encoder.6.weight", "codebook", "decoder_head.4.weight"):
        grad = dict(tok.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_training_lowers_reconstruction_and_keeps_codes_in_use():
    torch.manual_seed(0)
    tok = VQTokenizer(width=4, codebook_size=8, code_dim=4)
    images = _images(32)
    history = train_tokenizer(tok, images, steps=60, batch_size=16, lr=3e-3)
    assert history["recon"][-1] < history["recon"][0]
    assert len(tok.tokenize(images).unique()) > 1


def test_bad_inputs():
    with pytest.raises(PriorlabError, match="did you mean|large"):
        tokenizer_width("larg")
    assert tokenizer_width("small") == SIZES["small"] and tokenizer_width(12) == 12
    tok = VQTokenizer(width=4, codebook_size=8, code_dim=4)
    with pytest.raises(PriorlabError):
        tok.tokenize(torch.rand(2, 1, 8, 8))
    with pytest.raises(PriorlabError):
        tok.decode(torch.full((1, 16), 8))
    with pytest.raises(PriorlabError):
        VQTokenizer(codebook_size=1)
    with pytest.raises(PriorlabError):
        TokenTransformer(8, dim=10, heads=4)


def test_transformer_is_causal_and_samples_valid_tokens():
    torch.manual_seed(0)
    model = TokenTransformer(8, num_classes=3, length=16, dim=16, depth=1, heads=2).eval()
    tokens, labels = torch.randint(8, (2, 16)), torch.tensor([0, 2])
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 8
    a, b = model(tokens, labels), model(changed, labels)
    # position t sees the class and tokens < t: logits up to position 9 are unchanged
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    sampled = model.sample(labels, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 16) and sampled.max() < 8 and sampled.min() >= 0


def test_generator_learns_a_class_dependent_sequence():
    torch.manual_seed(0)
    labels = torch.arange(2).repeat(16)
    tokens = torch.stack([torch.full((16,), 1 + 2 * int(c)) for c in labels])
    model = TokenTransformer(8, num_classes=2, dim=16, depth=1, heads=2)
    losses = train_generator(model, tokens, labels, steps=80, batch_size=16, lr=1e-2)
    assert losses[-1] < 0.2 * losses[0]
    sampled = model.eval().sample(torch.tensor([0, 1]), temperature=0.5)
    assert (sampled[0] == 1).float().mean() > 0.8 and (sampled[1] == 3).float().mean() > 0.8


def test_pretrained_tokenizer_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORLAB_CACHE", str(tmp_path))
    first, info = pretrained_tokenizer(size=4, codebook_size=8, code_dim=4, steps=2, batch_size=8)
    again, info_again = pretrained_tokenizer(size=4, codebook_size=8, code_dim=4, steps=2, batch_size=8)
    assert len(list((tmp_path / "tokenizer").glob("*.pt"))) == 1
    assert info == info_again
    for (name, p), q in zip(first.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_pipeline_scores_report_every_metric():
    torch.manual_seed(0)
    tok = VQTokenizer(width=4, codebook_size=8, code_dim=4).eval()
    model = TokenTransformer(8, num_classes=2, dim=16, depth=1, heads=2)
    judge = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2))
    judge.features = lambda x: x.flatten(1)[:, :6]
    real = (_images(12), torch.arange(2).repeat(6))
    scores, generated = pipeline_scores(tok, model, judge, real, samples_per_class=4,
                                        perturb_rate=0.5, perturb_delta=2)
    assert generated.shape == (8, 1, 16, 16)
    assert set(scores) == {"recon_psnr", "recon_fd", "gen_fd", "gen_class_acc", "code_usage", "pfid"}
    assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())
