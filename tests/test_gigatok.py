"""GigaTok's semantic regulariser and entropy loss (paper 15)."""

import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.tokenizer_regularisers import (
    SemanticRegulariser,
    codebook_entropy_loss,
    semantic_alignment_loss,
)
from priorlab.generative.tokenizer import VQTokenizer, classifier_feature_map, vq_loss


def test_alignment_loss_known_values():
    f = torch.randn(2, 5, 3, 3)
    assert semantic_alignment_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    assert semantic_alignment_loss(-f, f).item() == pytest.approx(2.0, abs=1e-6)
    assert semantic_alignment_loss(3 * f, f).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    a, b = torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    a[0, 0], b[0, 1] = 1.0, 1.0
    assert semantic_alignment_loss(a, b).item() == pytest.approx(1.0)  # orthogonal


def test_alignment_loss_bad_shapes():
    with pytest.raises(PriorlabError, match="shapes differ"):
        semantic_alignment_loss(torch.randn(2, 5, 3, 3), torch.randn(2, 4, 3, 3))
    with pytest.raises(PriorlabError):
        semantic_alignment_loss(torch.randn(2, 5), torch.randn(2, 5))


def test_regulariser_trains_projector_and_decoder_not_teacher():
    torch.manual_seed(0)
    tok = VQTokenizer(width=4, codebook_size=8, code_dim=4)
    teacher = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.AvgPool2d(4))
    semantic = SemanticRegulariser(tok.feature_channels, teacher, 6)
    images = torch.rand(4, 1, 16, 16)
    loss, parts = vq_loss(tok, images, semantic=semantic, semantic_weight=0.5)
    loss.backward()
    assert 0 <= parts["semantic"] <= 2
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in semantic.projector.parameters())
    assert tok.decoder_stem[0].weight.grad.abs().sum() > 0


def test_zero_weight_is_the_plain_loss():
    torch.manual_seed(0)
    tok = VQTokenizer(width=4, codebook_size=8, code_dim=4)
    semantic = SemanticRegulariser(tok.feature_channels, nn.Conv2d(1, 3, 4, stride=4), 3)
    images = torch.rand(4, 1, 16, 16)
    plain, _ = vq_loss(tok, images)
    zero, parts = vq_loss(tok, images, semantic=semantic, semantic_weight=0.0)
    torch.testing.assert_close(plain, zero)
    assert "semantic" not in parts
    regularised, _ = vq_loss(tok, images, semantic=semantic, semantic_weight=0.5)
    assert regularised > plain


def test_classifier_trunk_gives_a_4x4_map():
    from priorlab.generative.evaluate import DigitClassifier

    trunk, channels = classifier_feature_map(DigitClassifier(image_size=16, channels=4))
    assert trunk(torch.rand(2, 1, 16, 16)).shape == (2, channels, 4, 4)


def test_entropy_loss_known_values():
    # confident, all codes used equally: per-token entropy 0, average entropy log K -> -log K
    k = 4
    distances = torch.full((k, k), 10.0).fill_diagonal_(0.0)
    assert codebook_entropy_loss(distances).item() == pytest.approx(-math.log(k), abs=1e-4)
    # confident but collapsed onto one code: 0 - 0
    collapsed = torch.full((k, k), 10.0)
    collapsed[:, 0] = 0.0
    assert codebook_entropy_loss(collapsed).item() == pytest.approx(0.0, abs=1e-4)
    # undecided tokens: per-token entropy log K, average log K -> 0
    assert codebook_entropy_loss(torch.zeros(3, k)).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(PriorlabError):
        codebook_entropy_loss(torch.zeros(3, k), temperature=-1.0)
    with pytest.raises(PriorlabError):
        codebook_entropy_loss(torch.zeros(3))


def test_centred_teacher_target():
    teacher = nn.Sequential(nn.Conv2d(1, 6, 4, stride=4), nn.ReLU())
    torch.manual_seed(0)
    images, features = torch.rand(8, 1, 16, 16), torch.randn(8, 6, 4, 4)
    for centre in (False, True):
        regulariser = SemanticRegulariser(6, teacher, 6, center_teacher=centre)
        with torch.no_grad():
            target = teacher(images)
            if centre:
                target = target - target.mean(dim=(0, 2, 3), keepdim=True)
            expected = semantic_alignment_loss(regulariser.projector(features), target)
        torch.testing.assert_close(regulariser(features, images), expected)
