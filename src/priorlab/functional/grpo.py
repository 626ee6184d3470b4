"""GRPO pieces for reinforcement fine-tuning (RFT) of any causal LM with verifiable 0/1 rewards, and
RIF-RFT's rollout-based prompt filter.

From Lai et al., "Reinforcement Fine-Tuning Naturally Mitigates Forgetting in Continual
Post-Training" (arXiv:2507.05386), which post-trains with GRPO (Shao et al., DeepSeekMath,
arXiv:2402.03300). For a prompt q, G completions o_1..o_G are sampled from the current policy and
scored r_i in {0, 1}. The group-relative advantage is

    A_i = (r_i - mean(r)) / (std(r) + eps)                                   (GRPO, eq. 3)

shared by every token of o_i, and the loss (to minimise) is

    L = - mean_i [ 1/|o_i| sum_t  min(rho_it A_i, clip(rho_it, 1 - e, 1 + e) A_i)
                                  - beta * KL_t(pi_theta || pi_ref) ]
    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)

with the per-token KL estimated as exp(d) - d - 1, d = log pi_ref - log pi_theta (the "k3"
estimator GRPO uses). A group whose completions all score the same has zero advantage everywhere
and contributes no policy gradient; RIF-RFT (the paper's rollout-based instance filtering) samples
rollouts for each training prompt first and keeps only prompts whose group is mixed
(:func:`informative_prompts`).

The functions work on token tensors from any ``transformers`` causal LM (SmolLM2, Llama, GPT-2):
:func:`completion_logprobs` reads per-token log-probabilities of the completions, and
:func:`sample_completions` draws G completions per prompt with ``model.generate``.
"""

from __future__ import annotations

import inspect

import torch

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_finite, check_number, check_tensor

FILTERS = ("mixed", "drop_all_wrong", "drop_all_correct")


def _grouped(rewards: torch.Tensor, group_size: int, who: str) -> torch.Tensor:
    rewards = check_tensor(rewards, "rewards", who=who, ndim=1, non_empty=True, finite=True)
    group_size = check_number(group_size, "group_size", who=who, low=2, integer=True,
                              hint="GRPO compares completions within a group: use G >= 2")
    if rewards.numel() % group_size:
        raise PriorlabError(f"{who}: {rewards.numel()} rewards do not split into groups of "
                            f"{group_size} (lay them out prompt by prompt, G completions each)")
    return rewards.float().reshape(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, *, eps: float = 1e-4,
                     scale: bool = True) -> torch.Tensor:
    """GRPO's group-relative advantages ``(r - group mean) / (group std + eps)`` (eq. 3).

    ``rewards``: shape ``(n_prompts * group_size,)``, prompt by prompt (the G completions of a
    prompt are adjacent). ``scale=False`` keeps only the mean subtraction (Dr. GRPO's variant).
    The std is the unbiased sample std, as in DeepSeekMath's and TRL's implementations."""
    who = "group_advantages"
    check_number(eps, "eps", who=who, low=0.0)
    groups = _grouped(rewards, group_size, who)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def informative_prompts(rewards: torch.Tensor, group_size: int, *,
                        rule: str = "mixed") -> torch.Tensor:
    """RIF-RFT's rollout-based instance filter: a boolean mask over prompts, True = keep.

    ``rule="mixed"`` keeps prompts whose G rollouts neither all succeed nor all fail (those have
    zero group-relative advantage, so GRPO learns nothing from them); ``"drop_all_wrong"`` drops
    only the prompts the model cannot yet solve at all, ``"drop_all_correct"`` only those already
    mastered (wrong: reward <= 0, right: reward >= 1). ``rewards`` as in :func:`group_advantages`;
    ``"mixed"`` works for any scalar reward."""
    who = "informative_prompts"
    if rule not in FILTERS:
        raise did_you_mean(str(rule), FILTERS, "filter rule")
    groups = _grouped(rewards, group_size, who)
    if rule == "mixed":
        return ~(groups == groups[:, :1]).all(dim=1)
    if rule == "drop_all_wrong":
        return ~(groups <= 0).all(dim=1)
    return ~(groups >= 1).all(dim=1)


def completion_logprobs(model, sequences: torch.Tensor, prompt_length: int,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities of each completion token under ``model``: shape ``(B, L - prompt_length)``.

    ``sequences``: ``(B, L)`` token ids, prompt (left-padded to ``prompt_length``) then completion;
    ``attention_mask`` the matching 0/1 mask (None = all ones; for left-padded prompts give the
    prompt mask followed by ones, which also sets the position ids as in
    :func:`sample_completions`). Mask padding after an end-of-sequence
    token with the ``completion_mask`` of :func:`grpo_loss`."""
    who = "completion_logprobs"
    sequences = check_tensor(sequences, "sequences", who=who, ndim=2, dtype="integer")
    prompt_length = check_number(prompt_length, "prompt_length", who=who, low=1,
                                 high=sequences.shape[1] - 1, integer=True,
                                 hint="the sequences must hold at least one completion token")
    positions = None
    if attention_mask is not None:
        check_tensor(attention_mask, "attention_mask", who=who, shape=tuple(sequences.shape))
        # left padding: count positions from each row's first real token, as sampling did
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=positions).logits
    # the logit at position t predicts token t + 1: keep the ones predicting completion tokens
    logits = logits[:, prompt_length - 1:-1].float()
    targets = sequences[:, prompt_length:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


_MAX_GAP = 30.0  # nats: exp(30) ~ 1e13, far beyond any ratio a working update produces


def _check_gap(gap: torch.Tensor, name: str, who: str) -> None:
    """The ratio exp(gap) overflows, and means the two policies are unrelated, past ~30 nats."""
    worst = float(gap.detach().abs().max())
    if worst > _MAX_GAP:
        raise PriorlabError(f"{who}: {name} reaches {worst:.3g} nats (limit {_MAX_GAP:g}): the "
                            "log-probabilities do not come from nearby policies on the same tokens")


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              completion_mask: torch.Tensor | None = None, *, ref_logprobs: torch.Tensor | None = None,
              clip_eps: float = 0.2, beta: float = 0.0) -> torch.Tensor:
    """The clipped GRPO objective, negated (a loss), averaged per completion then over completions.

    ``logprobs``: ``(B, T)`` per-token log-probabilities under the policy being trained (with
    grad); ``old_logprobs``: the same under the policy that sampled them (no grad; equal to
    ``logprobs.detach()`` when each batch gets one update, as in TRL's default); ``advantages``:
    ``(B,)`` from :func:`group_advantages`; ``completion_mask``: ``(B, T)`` 1 for real completion
    tokens; ``ref_logprobs`` and ``beta``: the KL penalty to a frozen reference (``beta=0``, TRL's
    default, needs no reference)."""
    who = "grpo_loss"
    logprobs = check_tensor(logprobs, "logprobs", who=who, ndim=2, dtype="float", non_empty=True)
    check_finite(logprobs.detach(), "logprobs", who=who)
    shape = tuple(logprobs.shape)
    old_logprobs = check_tensor(old_logprobs, "old_logprobs", who=who, shape=shape, finite=True)
    advantages = check_tensor(advantages, "advantages", who=who, shape=(shape[0],), finite=True)
    clip_eps = check_number(clip_eps, "clip_eps", who=who, low=0.0, low_open=True, high=1.0)
    beta = check_number(beta, "beta", who=who, low=0.0)
    if completion_mask is None:
        mask = torch.ones_like(logprobs)
    else:
        mask = check_tensor(completion_mask, "completion_mask", who=who, shape=shape).to(logprobs.dtype)
    if bool((mask.sum(dim=1) == 0).any()):
        raise PriorlabError(f"{who}: a completion has no unmasked token (completion_mask row of zeros)")
    log_ratio = logprobs - old_logprobs.detach()
    _check_gap(log_ratio, "logprobs - old_logprobs", who)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(logprobs.dtype).unsqueeze(1)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    if beta > 0:
        if ref_logprobs is None:
            raise PriorlabError(f"{who}: beta={beta} needs ref_logprobs (the frozen reference "
                                "model's log-probabilities of the same tokens), or use beta=0")
        ref = check_tensor(ref_logprobs, "ref_logprobs", who=who, shape=shape, finite=True).detach()
        gap = ref - logprobs
        _check_gap(gap, "ref_logprobs - logprobs", who)
        per_token = per_token + beta * (torch.exp(gap) - gap - 1)
    per_completion = (per_token * mask).sum(dim=1) / mask.sum(dim=1)
    return per_completion.mean()


@torch.no_grad()
def sample_completions(model, prompt_ids: torch.Tensor, group_size: int, max_new_tokens: int, *,
                       attention_mask: torch.Tensor | None = None, temperature: float = 1.0,
                       eos_token_id: int | None = None, pad_token_id: int = 0,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``group_size`` completions per prompt: ``(sequences, completion_mask)``, prompt by prompt.

    ``prompt_ids``: ``(P, Lp)`` left-padded prompts. Ancestral sampling at ``temperature`` with a
    KV cache, token by token, so that a ``generator`` makes it reproducible (``model.generate``
    draws from the global RNG); completions stop at ``eos_token_id`` (tokens after it are set to
    ``pad_token_id`` and masked out; the end token itself is kept in the mask)."""
    who = "sample_completions"
    prompt_ids = check_tensor(prompt_ids, "prompt_ids", who=who, ndim=2, dtype="integer", non_empty=True)
    group_size = check_number(group_size, "group_size", who=who, low=1, integer=True)
    max_new_tokens = check_number(max_new_tokens, "max_new_tokens", who=who, low=1, integer=True)
    temperature = check_number(temperature, "temperature", who=who, low=0.0, low_open=True)
    ids = prompt_ids.repeat_interleave(group_size, dim=0)
    mask = (torch.ones_like(ids) if attention_mask is None
            else attention_mask.repeat_interleave(group_size, dim=0).to(ids.dtype))
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    # transformers 5 names the KV cache ``cache``; earlier versions ``past_key_values``
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past, logits = getattr(out, cache_arg), out.logits[:, -1]
    next_pos = positions[:, -1:] + 1
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    new_tokens, keep = [], []
    for _ in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        keep.append(~finished)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        new_tokens.append(token)
        if eos_token_id is not None:
            finished = finished | (token == eos_token_id)
            if bool(finished.all()):
                break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **{cache_arg: past})
        past, logits, next_pos = getattr(out, cache_arg), out.logits[:, -1], next_pos + 1
    sequences = torch.cat([ids, torch.stack(new_tokens, dim=1)], dim=1)
    return sequences, torch.stack(keep, dim=1).long()
