"""Tests for the sparse autoencoder, the residual-stream hooks and FAST's reproduction (paper 60)."""

from __future__ import annotations

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.llm import tiny_llama
from priorlab.nn.sparse_autoencoder import (SparseAutoencoder, chat_ids, collect_residual, fit_sae,
                                            pack_blocks, pad_batch, reconstruction_metrics,
                                            spliced_loss)
from priorlab.reproductions import p060_fast_sae as repro


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=0)


def _sequences(lengths=(5, 9, 3)):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(256, (n,), generator=generator) for n in lengths]


def test_sae_known_values_and_initialisation():
    sae = SparseAutoencoder(4, 6, l1_coefficient=1.0, seed=0)
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.full((6,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    with torch.no_grad():
        sae.W_enc.zero_(), sae.W_dec.zero_()
        sae.W_enc[:4, :4] = torch.eye(4)
        sae.W_dec[:4, :4] = torch.eye(4)
    x = torch.tensor([[1.0, -2.0, 3.0, 0.0]])
    x_hat, z = sae(x)
    assert torch.allclose(z[0, :4], torch.tensor([1.0, 0.0, 3.0, 0.0]))
    assert torch.allclose(x_hat, torch.tensor([[1.0, 0.0, 3.0, 0.0]]))
    loss, parts = sae.loss(x)
    # squared error 4 (the clipped -2) + L1 (1 + 3) weighted by unit decoder norms
    assert loss.item() == pytest.approx(8.0) and parts["l0"] == 2.0


def test_scale_keeps_raw_units():
    sae = SparseAutoencoder(4, 8, seed=1)
    x = torch.randn(16, 4)
    before = sae(x)[0]
    with torch.no_grad():
        sae.scale.fill_(3.0)
        sae.b_dec.zero_()
    # scaling the input by s and the output by 1/s keeps a bias-free linear-ReLU map's output
    assert torch.allclose(sae(x)[0], before, atol=1e-6)


def test_fit_reduces_error_and_metrics():
    torch.manual_seed(0)
    data = torch.randn(512, 3) @ torch.randn(3, 8)  # rank-3 data in 8 dimensions
    sae = SparseAutoencoder(8, 16, l1_coefficient=0.1, seed=0)
    start = reconstruction_metrics(sae, data)["normalised_mse"]
    history = fit_sae(sae, data, steps=200, batch_size=64, lr=1e-2, seed=0)
    end = reconstruction_metrics(sae, data)
    assert len(history) == 200 and all(torch.isfinite(torch.tensor(history)))
    assert end["normalised_mse"] < 0.5 * start and 0 < end["l0"] <= 16
    assert sae.l1_coefficient == 0.1  # the warm-up leaves the coefficient as given
    state = SparseAutoencoder(8, 16)
    state.load_state_dict(sae.state_dict())
    assert torch.equal(state(data)[0], sae(data)[0])


def test_gradients_finite():
    sae = SparseAutoencoder(8, 16, seed=0)
    sae.loss(torch.randn(10, 8))[0].backward()
    assert all(torch.isfinite(p.grad).all() for p in sae.parameters())


def test_pack_blocks_and_padding():
    seqs = _sequences()
    blocks = pack_blocks(seqs, 4)
    assert len(blocks) == 4 and torch.equal(torch.cat(blocks), torch.cat(seqs)[:16])
    ids, mask = pad_batch(seqs, pad_id=7)
    assert ids.shape == (3, 9) and mask.sum().item() == 17 and ids[2, 3:].eq(7).all()


def test_collect_padding_invariant_and_early_stop(model):
    seqs = _sequences()
    batched = collect_residual(model, 0, seqs, batch_size=3, skip_first=1)
    single = [collect_residual(model, 0, [s], batch_size=1, skip_first=1)[0] for s in seqs]
    assert [len(a) for a in batched] == [4, 8, 2]
    for a, b in zip(batched, single):
        assert torch.allclose(a, b, atol=1e-5)
    # the hook's value equals the model's own hidden state after layer 0
    out = model(input_ids=seqs[1][None], output_hidden_states=True).hidden_states[1][0, 1:]
    assert torch.allclose(batched[1], out, atol=1e-5)


def test_splice_identity_and_effect(model):
    seqs = _sequences((12, 20))
    clean = spliced_loss(model, 1, seqs, None)

    class Identity(SparseAutoencoder):
        def forward(self, x):
            return x, x

    assert spliced_loss(model, 1, seqs, Identity(32, 8)) == pytest.approx(clean, abs=1e-5)
    assert spliced_loss(model, 1, seqs, SparseAutoencoder(32, 8, seed=0)) != pytest.approx(clean)


def test_chat_ids_truncates_with_template():
    tokenizer = repro.ByteChatTokenizer()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ids = chat_ids(tokenizer, messages, 100)
    assert bytes(ids.tolist()).decode() == "<user>hi\n<assistant>hello\n"
    assert len(chat_ids(tokenizer, messages, 5)) == 5


@pytest.mark.parametrize("bad", [
    lambda: SparseAutoencoder(0, 4),
    lambda: SparseAutoencoder(4, 4, l1_coefficient=-1),
    lambda: SparseAutoencoder(4, 4)(torch.randn(2, 5)),
    lambda: SparseAutoencoder(4, 4)(torch.tensor([[float("nan")] * 4])),
    lambda: SparseAutoencoder(4, 4)(torch.ones(2, 4, dtype=torch.long)),
    lambda: fit_sae(SparseAutoencoder(4, 4), torch.randn(8, 4), steps=0),
    lambda: fit_sae(SparseAutoencoder(4, 4), torch.randn(8, 4), lr=0.0),
    lambda: pack_blocks(_sequences((2, 1)), 4),
    lambda: pack_blocks([], 4),
    lambda: pad_batch([torch.randn(3)]),
    lambda: collect_residual(tiny_llama(seed=0), 5, _sequences()),
    lambda: collect_residual(torch.nn.Linear(2, 2), 0, _sequences()),
    lambda: repro.run("fats", repro.CLAIM.tiers["smoke"], 0),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_conversations_and_arms_differ():
    conversations = repro.documentation_conversations("evaluation", 600)
    assert len(conversations) > 19
    assert conversations[0][0]["content"].startswith("Explain ")
    assert all(len(c[1]["content"]) <= 600 for c in conversations)
    cfg = repro.CLAIM.tiers["smoke"]
    data = repro._data(cfg["model"], cfg["layer"], cfg["max_chars"], cfg["max_len"],
                       cfg["block_size"], cfg["train_conversations"], cfg["eval_conversations"],
                       cfg["batch"], 0)
    assert data["fast"].shape == data["block"].shape
    assert not torch.allclose(data["fast"], data["block"])  # same tokens, other contexts
    fast, block = repro.run("fast", cfg, 0), repro.run("block", cfg, 0)
    assert fast.metrics["normalised_mse"] != block.metrics["normalised_mse"]
    assert fast.metrics["clean_loss"] == block.metrics["clean_loss"]
