"""GRPO pieces and RIF-RFT's filter (paper 58), and the verifiable synthetic tasks."""

from __future__ import annotations

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.grpo import (
    completion_logprobs,
    group_advantages,
    grpo_loss,
    informative_prompts,
    sample_completions,
)
from priorlab.llm import tiny_llama
from priorlab.llm.tasks import (
    TASKS,
    VOCAB,
    accuracy,
    answer_loss,
    decode,
    encode,
    exact_match,
    task_llama,
    task_splits,
)


def test_group_advantages_known_values():
    adv = group_advantages(torch.tensor([1.0, 0, 1, 0, 1, 0, 0, 0]), 4, eps=0.0)
    std = torch.tensor([1.0, 0, 1, 0]).std()  # unbiased, as in DeepSeekMath / TRL
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, 0.5, -0.5]) / std)
    one_right = torch.tensor([0.75, -0.25, -0.25, -0.25]) / torch.tensor([1.0, 0, 0, 0]).std()
    assert torch.allclose(adv[4:], one_right)
    mean_only = group_advantages(torch.tensor([1.0, 0, 0, 0]), 4, scale=False)
    assert torch.allclose(mean_only, torch.tensor([0.75, -0.25, -0.25, -0.25]))
    # a uniform group has zero advantage (no gradient): what RIF-RFT filters out
    assert torch.equal(group_advantages(torch.ones(4), 4), torch.zeros(4))


def test_informative_prompts_rules():
    rewards = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0])
    assert informative_prompts(rewards, 4).tolist() == [False, False, True]
    assert informative_prompts(rewards, 4, rule="drop_all_wrong").tolist() == [True, False, True]
    assert informative_prompts(rewards, 4, rule="drop_all_correct").tolist() == [False, True, True]


def test_grpo_loss_is_policy_gradient_at_ratio_one():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, requires_grad=True)
    tokens = torch.randint(0, 5, (4, 3))
    logprobs = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    adv = torch.tensor([1.0, -1.0, 0.5, 0.0])
    loss = grpo_loss(logprobs, logprobs.detach(), adv)
    assert torch.isclose(loss, -adv.mean())  # ratio 1: the surrogate's value is mean(A)
    # and its gradient is REINFORCE's: -mean_i A_i * mean_t grad log pi
    (g,) = torch.autograd.grad(loss, logits, retain_graph=True)
    ref = -(adv.unsqueeze(1) * logprobs).mean(1).mean()
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g, g_ref, atol=1e-6)


def test_grpo_loss_clips_and_masks_and_kl():
    lp = torch.log(torch.tensor([[0.9, 0.5]]))
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    # ratio 1.8 on the first token, positive advantage: clipped to 1.2
    loss = grpo_loss(lp, old, torch.tensor([1.0]), torch.tensor([[1, 0]]))
    assert torch.isclose(loss, torch.tensor(-1.2))
    # negative advantage: min keeps the unclipped, larger penalty
    loss = grpo_loss(lp, old, torch.tensor([-1.0]), torch.tensor([[1, 0]]))
    assert torch.isclose(loss, torch.tensor(1.8))
    # KL penalty is zero when the policy equals the reference, positive otherwise
    same = grpo_loss(lp, lp, torch.tensor([0.0]), ref_logprobs=lp, beta=0.5)
    assert torch.isclose(same, torch.tensor(0.0))
    apart = grpo_loss(lp, lp, torch.tensor([0.0]), ref_logprobs=old, beta=0.5)
    assert float(apart) > 0


@pytest.mark.parametrize("call", [
    lambda: group_advantages(torch.ones(5), 2),
    lambda: group_advantages(torch.ones(4), 1),
    lambda: group_advantages(torch.tensor([1.0, float("nan")]), 2),
    lambda: grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3)),
    lambda: grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), clip_eps=1.5),
    lambda: grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), beta=0.1),
    lambda: grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3)),
    lambda: grpo_loss(torch.full((2, 3), float("nan")), torch.zeros(2, 3), torch.zeros(2)),
    lambda: grpo_loss(torch.zeros(1, 1), torch.full((1, 1), -1e29), torch.tensor([-1.0])),
    lambda: informative_prompts(torch.ones(4), 2, rule="mixd"),
    lambda: completion_logprobs(None, torch.zeros(2, 3, dtype=torch.long), 3),
    lambda: sample_completions(None, torch.zeros(2, 3), 2, 1),
])
def test_bad_input(call):
    with pytest.raises(PriorlabError):
        call()


def test_sampling_and_logprobs_on_tiny_llama():
    model = tiny_llama(vocab_size=20, hidden=16, layers=1, heads=2, intermediate=32)
    prompts = torch.randint(1, 20, (3, 4), generator=torch.Generator().manual_seed(0))
    seqs, mask = sample_completions(model, prompts, 2, 3, generator=torch.Generator().manual_seed(1))
    again, _ = sample_completions(model, prompts, 2, 3, generator=torch.Generator().manual_seed(1))
    assert seqs.shape == (6, 7) and torch.equal(seqs, again) and mask.sum() == 18
    assert torch.equal(seqs[::2, :4], prompts) and torch.equal(seqs[1::2, :4], prompts)
    lp = completion_logprobs(model, seqs, 4)
    full = torch.log_softmax(model(input_ids=seqs).logits, -1)
    assert torch.allclose(lp[:, 1], full[torch.arange(6), 4, seqs[:, 5]], atol=1e-5)
    # an end-of-sequence token masks what follows it
    seqs, mask = sample_completions(model, prompts, 2, 3, eos_token_id=int(seqs[0, 4]),
                                    generator=torch.Generator().manual_seed(1))
    assert mask[0].tolist() == [1, 0, 0] and (seqs[0, 5:] == 0).all()


def test_grpo_step_moves_probability_towards_rewarded_completions():
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=8, hidden=16, layers=1, heads=2, intermediate=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    prompt = torch.tensor([[1, 2, 3]])
    target = 5
    with torch.no_grad():
        start = torch.softmax(model(input_ids=prompt).logits[0, -1], -1)[target]
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        seqs, mask = sample_completions(model, prompt, 8, 1, generator=gen)
        rewards = (seqs[:, 3] == target).float()
        lp = completion_logprobs(model, seqs, 3)
        loss = grpo_loss(lp, lp.detach(), group_advantages(rewards, 8), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = torch.softmax(model(input_ids=prompt).logits[0, -1], -1)[target]
    assert float(end) > float(start) + 0.3


def test_tasks_are_verifiable_and_disjoint():
    assert decode(encode("37+58=")) == "37+58="
    for task in TASKS:
        splits = task_splits(task)
        assert len(splits["test"]) == 500 and len(splits["val"]) == 300
        test = {tuple(p) for p in splits["test"].prompts.tolist()}
        assert not test & {tuple(p) for p in splits["train"].prompts.tolist()}
    add = task_splits("add")["test"]
    a, b = decode(add.prompts[0])[:-1].split("+")
    assert decode(add.answers[0]) == f"{int(a) + int(b):03d}"
    rev = task_splits("rev")["test"]
    assert decode(rev.answers[0]) == decode(rev.prompts[0])[1:-1][::-1]
    assert exact_match(add.answers[:3], add.answers[:3]).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(PriorlabError):
        task_splits("addition")


def test_task_llama_sft_and_accuracy():
    model = task_llama({"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}, seed=0)
    assert model.config.vocab_size == len(VOCAB)
    split = task_splits("rev")["test"]
    loss = answer_loss(model, split.prompts[:8], split.answers[:8])
    assert torch.isfinite(loss) and 0.0 <= accuracy(model, split) <= 1.0


def test_reproduction_arms_differ():
    from priorlab.reproductions import p058_rft_forgetting as repro
    cfg = repro.CLAIM.tiers["smoke"]
    with pytest.raises(PriorlabError):
        repro.run("grpo", cfg, 0)
    sft = repro.run("sft", cfg, 0)
    rif = repro.run("rif_rft", cfg, 0)
    assert set(sft.metrics) == set(rif.metrics)
    assert 0.0 <= rif.metrics["kept_share"] <= 1.0 and sft.metrics["kept_share"] == 1.0


def test_left_padded_prompts_match_unpadded():
    model = tiny_llama(vocab_size=20, hidden=16, layers=1, heads=2, intermediate=32)
    prompt, padded = torch.tensor([[5, 6, 7]]), torch.tensor([[0, 0, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    plain, _ = sample_completions(model, prompt, 3, 2, generator=torch.Generator().manual_seed(2))
    left, _ = sample_completions(model, padded, 3, 2, attention_mask=mask,
                                 generator=torch.Generator().manual_seed(2))
    assert torch.equal(plain[:, 3:], left[:, 5:])
    full_mask = torch.cat([mask.repeat(3, 1), torch.ones(3, 2, dtype=torch.long)], dim=1)
    assert torch.allclose(completion_logprobs(model, plain, 3),
                          completion_logprobs(model, left, 5, full_mask), atol=1e-5)
