"""Insertion Language Models (seed 63): star-graph generator, drop/loss known values, decoding."""

import math

import pytest
import torch

from priorlab.data.star_graph import StarVocab, is_valid_path, star_graphs
from priorlab.errors import PriorlabError
from priorlab.nn.insertion_lm import (InsertionLM, InsertionTargets, SequenceTransformer, drop_tokens,
                                      insertion_decode, insertion_loss)
from priorlab.registry import get
from priorlab.reproductions import p063_ilm


def test_star_graph_structure():
    g = star_graphs(50, degree=3, path_length=4, num_nodes=15, seed=3)
    n_edges = 3 * 3
    assert g.prompt.shape == (50, 1 + 2 * n_edges + 4) and g.path.shape == (50, 4)
    v = g.vocab
    assert (g.prompt[:, 0] == v.cls).all() and (g.prompt[:, -4] == v.query).all()
    assert (g.prompt[:, -1] == v.answer).all()
    for i in range(50):
        edges = {tuple(e) for e in g.prompt[i, 1:1 + 2 * n_edges].view(-1, 2).tolist()}
        path = g.path[i].tolist()
        assert path[0] == g.prompt[i, -3] and path[-1] == g.prompt[i, -2]  # source, goal
        assert all((a, b) in edges for a, b in zip(path, path[1:]))
        nodes = [u for e in edges for u in e]
        assert len(set(nodes)) == 3 * 3 + 1 and max(nodes) < 15
        assert sum(u == path[0] for u, _ in edges) == 3  # the source is the centre
    assert torch.equal(star_graphs(5, seed=1).prompt, star_graphs(5, seed=1).prompt)
    assert not torch.equal(star_graphs(5, seed=1).prompt, star_graphs(5, seed=2).prompt)


def test_is_valid_path_needs_exact_length_and_nodes():
    g = star_graphs(3, degree=2, path_length=3, num_nodes=8, seed=0)
    pad = g.vocab.pad
    good = torch.cat([g.path, torch.full((3, 2), pad)], dim=1)
    assert is_valid_path(g, good).all()
    longer = good.clone()
    longer[:, 3] = 0
    assert not is_valid_path(g, longer).any()
    assert not is_valid_path(g, g.path[:, :2]).any()


def test_drop_tokens_known_case():
    prompt = torch.tensor([[20, 21]])
    target = torch.tensor([[5, 6, 7, 8]])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        tokens, t = drop_tokens(prompt, target, pad_id=9, vocab_size=22, generator=gen)
        n = int(t.n_dropped)
        kept = tokens[0, 2:][tokens[0, 2:] != 9].tolist()
        assert len(kept) == 4 - n and kept == [x for x in [5, 6, 7, 8] if x in kept]  # in order
        assert t.counts.sum() == n
        # every dropped token sits in the gap after the last kept token before it
        for token in {5, 6, 7, 8} - set(kept):
            before = [x for x in kept if x < token]
            gap = 1 + len(before)
            assert t.counts[0, gap, token] == 1
        assert t.gap_mask[0].tolist() == [False, True] + [True] * (4 - n) + [False] * n


def test_insertion_loss_known_value():
    # uniform logits: joint softmax over 2 allowed gaps x 2 allowed tokens = 1/4 each
    logits = torch.zeros(1, 3, 4)
    counts = torch.zeros(1, 3, 4)
    counts[0, 1, 0] = 1
    counts[0, 2, 1] = 1
    targets = InsertionTargets(counts, torch.tensor([2]), torch.tensor([[False, True, True]]))
    mask = torch.tensor([True, True, False, False])
    loss = insertion_loss((logits, torch.zeros(1)), targets, token_mask=mask)
    assert math.isclose(loss.item(), math.log(4) + math.log(2), rel_tol=1e-6)  # + BCE(0, target 0)
    done = InsertionTargets(torch.zeros(1, 3, 4), torch.tensor([0]), targets.gap_mask)
    loss = insertion_loss((logits, torch.tensor([3.0])), done, token_mask=mask, stop_weight=2.0)
    assert math.isclose(loss.item(), 2 * math.log1p(math.exp(-3.0)), rel_tol=1e-6)


def _model(graphs, causal=False):
    torch.manual_seed(0)
    backbone = SequenceTransformer(graphs.vocab.size, graphs.prompt.shape[1] + graphs.path_length + 2,
                                   pad_id=graphs.vocab.pad, dim=16, depth=1, heads=2, causal=causal)
    return backbone if causal else InsertionLM(backbone)


def test_gradients_finite_and_padding_ignored():
    g = star_graphs(8, degree=2, path_length=3, num_nodes=8, seed=0)
    model = _model(g)
    tokens, targets = drop_tokens(g.prompt, g.path, pad_id=g.vocab.pad, vocab_size=g.vocab.size,
                                  generator=torch.Generator().manual_seed(1))
    loss = insertion_loss(model(tokens), targets, token_mask=g.vocab.node_tokens())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    # extra PAD on the right changes nothing for the real positions
    wider = torch.cat([tokens, torch.full((8, 2), g.vocab.pad)], dim=1)
    torch.testing.assert_close(model(wider)[0][:, : tokens.shape[1]], model(tokens)[0], atol=1e-5, rtol=1e-5)


def test_causal_backbone_ignores_the_future():
    g = star_graphs(2, degree=2, path_length=3, num_nodes=8, seed=0)
    model = _model(g, causal=True).eval()
    x = torch.cat([g.prompt, g.path], dim=1)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 8
    torch.testing.assert_close(model(x)[:, :-1], model(y)[:, :-1])


def test_decode_inserts_at_the_argmax_gap_and_stops():
    vocab = StarVocab(4)

    class Scripted(InsertionLM):
        """Inserts token 3 after the first position, then 2 after the prompt, then stops."""

        def forward(self, tokens):
            logits = torch.zeros(*tokens.shape, vocab.size)
            n = (tokens != vocab.pad).sum(dim=1)
            stop = torch.where(n >= 4, 10.0, -10.0)
            for b in range(tokens.shape[0]):
                if n[b] == 2:
                    logits[b, 1, 3] = 5.0
                else:
                    logits[b, 1, 2] = 5.0
            return logits, stop

    model = Scripted(SequenceTransformer(vocab.size, 6, pad_id=vocab.pad, dim=4, heads=1))
    out = insertion_decode(model, torch.tensor([[vocab.cls, vocab.answer]]), 4,
                           token_mask=vocab.node_tokens())
    assert out.tolist() == [[2, 3, vocab.pad, vocab.pad]]


def test_bad_inputs():
    g = star_graphs(4, degree=2, path_length=3, num_nodes=8, seed=0)
    with pytest.raises(PriorlabError):
        star_graphs(4, degree=3, path_length=5, num_nodes=12)
    with pytest.raises(PriorlabError):
        star_graphs(0)
    with pytest.raises(PriorlabError):
        InsertionLM(_model(g, causal=True))
    with pytest.raises(PriorlabError):
        _model(g)(torch.full((1, 3), 99))
    with pytest.raises(PriorlabError):
        insertion_decode(_model(g), g.prompt.float(), 3)
    with pytest.raises(PriorlabError):
        insertion_loss(torch.zeros(1, 3, 4), None)
    with pytest.raises(PriorlabError, match="did you mean"):
        p063_ilm.run("insert", p063_ilm.CLAIM.tiers["smoke"], 0)


def test_card_and_arms_differ():
    card = get("ilm")
    assert card.reproduction == "p063_ilm" and card.paper.seed_id == 63
    g = star_graphs(4, degree=2, path_length=3, num_nodes=8, seed=0)
    cfg = p063_ilm.CLAIM.tiers["smoke"]
    models = {arm: p063_ilm.build_model(arm, g, cfg) for arm in p063_ilm.ARMS}
    assert isinstance(models["insertion"], InsertionLM) and models["autoregressive"].causal
    assert not models["masked_diffusion"].causal
    sizes = {arm: sum(p.numel() for p in m.parameters()) for arm, m in models.items()}
    assert sizes["autoregressive"] == sizes["masked_diffusion"]
    assert sizes["insertion"] - sizes["autoregressive"] == cfg["dim"] + 1  # the stop head only


def test_insertion_loss_rejects_bad_logits_and_targets():
    # fuzz findings: NaN insertion logits gave a NaN loss; an empty batch, a mis-shaped
    # stop_logits or a list n_dropped crashed inside torch without naming the argument
    tokens, targets = drop_tokens(torch.tensor([[1, 2]]), torch.tensor([[3, 1, 2]]), pad_id=0,
                                  vocab_size=4, generator=torch.Generator().manual_seed(0))
    insert_logits, stop_logits = torch.randn(1, 5, 4), torch.randn(1)
    assert torch.isfinite(insertion_loss((insert_logits, stop_logits), targets))
    nan_logits = insert_logits.clone()
    nan_logits[0, 2, 1] = float("nan")
    with pytest.raises(PriorlabError, match="insert_logits"):
        insertion_loss((nan_logits, stop_logits), targets)
    with pytest.raises(PriorlabError, match="insert_logits is empty"):
        insertion_loss((insert_logits[:0], stop_logits[:0]), InsertionTargets(
            targets.counts[:0], targets.n_dropped[:0], targets.gap_mask[:0]))
    with pytest.raises(PriorlabError, match="stop_logits"):
        insertion_loss((insert_logits, stop_logits[:, None]), targets)
    with pytest.raises(PriorlabError, match="n_dropped"):
        insertion_loss((insert_logits, stop_logits), targets._replace(n_dropped=[1]))
    negative = torch.zeros(1, 5, 4)
    negative[0, 2, 1] = -1.0
    with pytest.raises(PriorlabError, match=">= 0"):
        insertion_loss((insert_logits, stop_logits), targets._replace(
            counts=negative, n_dropped=torch.tensor([-1])))
