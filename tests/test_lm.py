"""priorlab.lm: corpus and split, the repetition scheduler, the tiny transformer, the loop."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.lm import (
    VOCABULARY,
    CharCorpus,
    TinyCausalLM,
    bits_per_char,
    decode,
    encode,
    held_out_windows,
    load_stdlib_corpus,
    mean_token_loss,
    next_token_loss,
    repeated_token_budget,
    stdlib_files,
    train_at_budget,
    train_lm,
)
from priorlab.lm.train import _WarmupCosine

# ---- corpus ---------------------------------------------------------------------------------


def test_vocabulary_and_encoding_round_trip():
    assert len(VOCABULARY) == 98 and VOCABULARY[0] == "\x00"
    text = "def f(x):\n\treturn x ** 2  # ok ~"
    assert decode(encode(text)) == text
    # outside the vocabulary (non-ASCII, carriage return) -> the unknown id 0
    assert encode("é\r€a").tolist() == [0, 0, 0, VOCABULARY.index("a")]
    assert encode("").numel() == 0
    with pytest.raises(PriorlabError, match="outside the vocabulary"):
        decode([98])


def _write_files(folder, n):
    texts = [f"x{i} = {i}\n" for i in range(n)]
    for i, text in enumerate(texts):
        (folder / f"m{i:02d}.py").write_text(text)
    (folder / "notes.txt").write_text("not python")
    return texts


def test_split_holds_out_every_tenth_file(tmp_path):
    texts = _write_files(tmp_path, 12)
    corpus = load_stdlib_corpus(tmp_path)
    assert corpus.held_out_files == ("m09.py",)
    assert corpus.train_files == tuple(f"m{i:02d}.py" for i in range(12) if i != 9)
    assert decode(corpus.held_out) == texts[9]
    assert decode(corpus.train) == "\n\n".join(t for i, t in enumerate(texts) if i != 9)
    assert load_stdlib_corpus(tmp_path).fingerprint == corpus.fingerprint
    (tmp_path / "m00.py").write_text("changed = 1\n")
    assert load_stdlib_corpus(tmp_path).fingerprint != corpus.fingerprint


def test_corpus_bad_directories(tmp_path):
    with pytest.raises(PriorlabError, match="does not exist"):
        stdlib_files(tmp_path / "missing")
    _write_files(tmp_path, 9)
    with pytest.raises(PriorlabError, match="at least 10"):
        stdlib_files(tmp_path)


def test_stdlib_corpus_is_real_and_sorted():
    files = stdlib_files()
    assert files == sorted(files) and len(files) >= 100
    corpus = load_stdlib_corpus()
    assert corpus.train.numel() > 1_000_000 and corpus.held_out.numel() > 100_000
    assert corpus.vocab_size == 98
    # Python source is almost all ASCII: unknowns are rare
    assert (corpus.train == 0).float().mean() < 0.01


# ---- the repetition scheduler ------------------------------------------------------------------


def test_repeated_token_budget_known_windows_and_epochs():
    stream = torch.arange(40)
    schedule = repeated_token_budget(stream, 32, 2, seq_len=4, start=3,
                                     generator=torch.Generator().manual_seed(0))
    # 32 tokens / 2 repetitions = 16 unique tokens = 4 windows of 4 inputs (+1 target)
    assert schedule.windows.tolist() == [[3, 4, 5, 6, 7], [7, 8, 9, 10, 11],
                                         [11, 12, 13, 14, 15], [15, 16, 17, 18, 19]]
    assert schedule.unique_tokens == 16 and schedule.total_tokens == 32 and schedule.epochs == 2
    # each epoch visits every window exactly once
    for epoch in schedule.order.view(2, 4):
        assert sorted(epoch.tolist()) == [0, 1, 2, 3]
    batches = list(schedule.batches(2))
    assert len(batches) == 4
    for inputs, targets in batches:
        assert inputs.shape == targets.shape == (2, 4)
        assert torch.equal(targets, inputs + 1)  # targets are the next tokens
    seen = torch.cat([x for x, _ in batches]).flatten()
    assert torch.equal(seen.bincount(minlength=40)[3:19], torch.full((16,), 2))


def test_budget_is_fixed_and_slices_nest_across_repetitions():
    stream = torch.randint(0, 98, (10_000,), generator=torch.Generator().manual_seed(1))
    schedules = {r: repeated_token_budget(stream, 4096, r, seq_len=32, start=100)
                 for r in (1, 4, 16)}
    assert {s.total_tokens for s in schedules.values()} == {4096}
    assert [schedules[r].unique_tokens for r in (1, 4, 16)] == [4096, 1024, 256]
    assert torch.equal(schedules[16].windows, schedules[1].windows[:8])


def test_random_start_is_seeded():
    def schedule(seed):
        return repeated_token_budget(torch.arange(5_000), 640, 2, seq_len=32,
                                     generator=torch.Generator().manual_seed(seed))
    a, b, c = schedule(5), schedule(5), schedule(6)
    assert a.start == b.start and torch.equal(a.order, b.order)
    assert (a.start, a.order.tolist()) != (c.start, c.order.tolist())


@pytest.mark.parametrize("kwargs, message", [
    (dict(total_tokens=64, repetitions=0), "repetitions"),
    (dict(total_tokens=-8, repetitions=1), "total_tokens"),
    (dict(total_tokens=64, repetitions=1.5), "repetitions"),
    (dict(total_tokens=60, repetitions=2), "multiple"),
    (dict(total_tokens=64, repetitions=16), "fewer than seq_len"),
    (dict(total_tokens=512, repetitions=1), "stream holds"),
    (dict(total_tokens=64, repetitions=1, start=90), "start"),
])
def test_repeated_token_budget_bad_input(kwargs, message):
    with pytest.raises(PriorlabError, match=message):
        repeated_token_budget(torch.arange(100), seq_len=8, **kwargs)


def test_scheduler_rejects_non_token_streams():
    for stream in (torch.rand(100), torch.arange(100).view(10, 10), [1, 2, 3]):
        with pytest.raises(PriorlabError, match="1-D int64"):
            repeated_token_budget(stream, 16, 1, seq_len=4)


def test_held_out_windows_spread_and_do_not_overlap():
    windows = held_out_windows(torch.arange(101), seq_len=10, max_tokens=40)
    assert windows[:, 0].tolist() == [0, 25, 50, 75]
    assert torch.equal(windows[2], torch.arange(50, 61))
    assert held_out_windows(torch.arange(101), seq_len=10, max_tokens=10_000).shape == (10, 11)
    with pytest.raises(PriorlabError, match="too short"):
        held_out_windows(torch.arange(5), seq_len=10, max_tokens=100)


# ---- the model -------------------------------------------------------------------------------


def _model(**kwargs):
    torch.manual_seed(0)
    return TinyCausalLM(98, **{"seq_len": 16, "d_model": 32, "n_layers": 2, "n_heads": 4, **kwargs})


def test_parameter_count_matches_the_architecture():
    # V*d + S*d (embeddings, output tied) + per layer (qkv 3d^2, out d^2, MLP 8d^2, two LN d) + LN d
    v, s, d, layers = 98, 64, 64, 2
    expected = v * d + s * d + layers * (12 * d * d + 2 * d) + d
    model = TinyCausalLM(v, seq_len=s, d_model=d, n_layers=layers, n_heads=4)
    assert sum(p.numel() for p in model.parameters()) == expected == 108_992


def test_model_is_causal():
    model = _model().eval()
    tokens = torch.randint(0, 98, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 98
    a, b = model(tokens), model(changed)
    assert a.shape == (2, 16, 98)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)  # the past ignores the future
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_dropout_is_active_only_in_training():
    tokens = torch.randint(0, 98, (2, 16), generator=torch.Generator().manual_seed(0))
    plain = _model()
    assert torch.equal(plain(tokens), plain(tokens))  # dropout 0: train mode is deterministic
    dropped = _model(dropout=0.5)
    assert not torch.equal(dropped(tokens), dropped(tokens))
    dropped.eval()
    assert torch.equal(dropped(tokens), plain.eval()(tokens))  # same init, no dropout at eval


def test_state_dict_round_trip():
    tokens = torch.randint(0, 98, (2, 16))
    source, copy = _model().eval(), TinyCausalLM(98, seq_len=16, d_model=32, n_layers=2, n_heads=4)
    copy.load_state_dict(source.state_dict())
    assert torch.equal(source(tokens), copy.eval()(tokens))


def test_uniform_logits_give_log_vocab_loss():
    logits = torch.zeros(3, 5, 98)
    targets = torch.randint(0, 98, (3, 5))
    assert next_token_loss(logits, targets).item() == pytest.approx(math.log(98))
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)
    with pytest.raises(PriorlabError, match="do not match"):
        next_token_loss(logits, targets[:, :4])


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=30, n_heads=4), "divisible"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(dropout=float("nan")), "dropout"),
    (dict(n_layers=0), "n_layers"),
    (dict(seq_len=2.5), "seq_len"),
])
def test_model_bad_arguments(kwargs, message):
    with pytest.raises(PriorlabError, match=message):
        TinyCausalLM(98, **kwargs)


def test_model_bad_tokens():
    model = _model()
    with pytest.raises(PriorlabError, match="integer tensor"):
        model(torch.rand(2, 16))
    with pytest.raises(PriorlabError, match="exceeds"):
        model(torch.zeros(1, 17, dtype=torch.long))


# ---- the training loop and the measurement --------------------------------------------------


def test_warmup_cosine_known_values():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = _WarmupCosine(optimizer, total_steps=10, warmup_steps=2, floor=0.1)
    lrs = []
    for _ in range(11):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_step(None)
    # warm-up 0.1x -> 1x over 2 steps, then cosine from 1x (step 2) to 0.1x (step 10)
    assert lrs[:3] == pytest.approx([0.2, 1.1, 2.0])
    assert lrs[6] == pytest.approx(0.2 + 1.8 * 0.5)  # half-way through the cosine
    assert lrs[10] == pytest.approx(0.2)


def _tiny_schedule(repetitions=4):
    stream = encode("def add(a, b):\n    return a + b\n" * 40)
    return repeated_token_budget(stream, 1024, repetitions, seq_len=16, start=0,
                                 generator=torch.Generator().manual_seed(0))


def test_train_lm_learns_and_reports_curves():
    schedule = _tiny_schedule()
    model = _model()
    evaluation = schedule.windows[:4]
    before = mean_token_loss(model, evaluation)
    run = train_lm(model, schedule, batch_size=4, lr=1e-2, held_out=evaluation, eval_points=4)
    assert run.steps == 16 and run.tokens == 1024
    assert run.held_out_loss < before - 1.0  # a repeated phrase is learned fast
    assert run.curves["held_out_loss"]["x"] == [256.0, 512.0, 768.0, 1024.0]
    assert len(run.curves["train_loss"]["y"]) == 4
    assert math.isfinite(run.generalisation_gap)
    assert run.held_out_loss == pytest.approx(mean_token_loss(model, evaluation))


def test_mean_token_loss_matches_direct_loss_and_restores_mode():
    model = _model(dropout=0.3)
    windows = torch.randint(0, 98, (5, 17), generator=torch.Generator().manual_seed(2))
    model.eval()
    direct = next_token_loss(model(windows[:, :-1]), windows[:, 1:]).item()
    model.train()
    assert mean_token_loss(model, windows, batch_size=2) == pytest.approx(direct, rel=1e-5)
    assert model.training


def test_weight_decay_changes_training_only_when_positive():
    results = []
    for weight_decay in (0.0, 0.0, 0.5):
        schedule, model = _tiny_schedule(), _model()
        train_lm(model, schedule, batch_size=4, lr=1e-2, weight_decay=weight_decay,
                 held_out=schedule.windows[:2], eval_points=1)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
    assert results[2].norm() < results[0].norm()


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1e-3), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(weight_decay=float("inf")), "weight_decay"),
    (dict(batch_size=0), "batch_size"),
    (dict(eval_points=100), "eval_points"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(held_out=torch.zeros(2, 9, dtype=torch.long)), "held_out"),
    (dict(held_out=[[1, 2]]), "held_out"),
    (dict(eval_tokens=0), "eval_tokens"),
])
def test_train_lm_bad_arguments(kwargs, message):
    schedule = _tiny_schedule()
    arguments = {"batch_size": 4, "lr": 1e-2, "held_out": schedule.windows[:2], **kwargs}
    with pytest.raises(PriorlabError, match=message):
        train_lm(_model(), schedule, **arguments)


def test_train_at_budget_is_deterministic_and_pairs_arms():
    text = "".join(f"value_{i} = compute({i}, {i * 7 % 13})\n" for i in range(600))
    corpus = CharCorpus(train=encode(text), held_out=encode(text[:3000]), train_files=(),
                        held_out_files=(), fingerprint="test")
    settings = dict(total_tokens=4096, seed=3, batch_size=8, lr=1e-2, seq_len=16, d_model=16,
                    n_layers=1, n_heads=2, eval_tokens=512, eval_points=2)
    once = train_at_budget(corpus, repetitions=4, **settings)
    again = train_at_budget(corpus, repetitions=4, **settings)
    online = train_at_budget(corpus, repetitions=1, **settings)
    assert once.held_out_loss == again.held_out_loss
    assert once.info["slice_start"] == online.info["slice_start"]  # nested unique data
    assert (once.info["unique_tokens"], online.info["unique_tokens"]) == (1024, 4096)
    with pytest.raises(PriorlabError, match="exceeds the training stream"):
        train_at_budget(corpus, repetitions=1, **{**settings, "total_tokens": 10**7})
