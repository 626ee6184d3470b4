"""Distributional Dispreference Optimization (D2O) as pure functions.

Duan, Yi, Zhang, Liu, Liu, Lu, Xie, Gu, "Negating Negatives: Alignment with Human Negative Samples
via Distributional Dispreference Optimization", arXiv:2403.03419 (v1 titled "... without Human
Positive Samples ...").

Only dispreferred (negative) responses ``y_l`` are labelled. For each prompt ``x``, ``K`` responses
``y_1..y_K`` sampled from the reference policy act as anchors; the loss (the paper's D2O
objective) is::

    L = -log sigmoid( beta/K * sum_i log pi(y_i|x)/pi_ref(y_i|x)
                      - alpha * log pi(y_l|x)/pi_ref(y_l|x) )

so the policy moves away from the negatives' distribution while the self-generated samples keep
it near the reference (the paper shows this is a distributional preference model with an implicit
Jeffrey-divergence regulariser). With ``K = 1`` and ``alpha = beta`` it is DPO with one
self-generated "preferred" response per negative, the instance-level baseline.

The paper's derivation has two references, ``pi_r^-`` under the samples' ratio and ``pi_r^+``
under the negative's; this function takes whatever reference log-probabilities it is given (the
reproduction passes one frozen reference, the model before training, for both).

``log pi(y|x)`` is a response's summed token log-probability given its prompt:
:func:`sequence_logprobs` computes it from any causal LM (``transformers`` style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.validation import check_finite, check_number, check_tensor

WHO = "d2o_loss"


def d2o_loss(policy_sample_logps: torch.Tensor, reference_sample_logps: torch.Tensor,
             policy_negative_logps: torch.Tensor, reference_negative_logps: torch.Tensor,
             beta: float = 0.1, alpha: float = 0.1, reduction: str = "mean") -> torch.Tensor:
    """The D2O loss from sequence log-probabilities.

    Args:
        policy_sample_logps, reference_sample_logps: ``(B, K)`` log-probabilities of the ``K``
            self-generated responses per prompt under the policy and the frozen reference.
        policy_negative_logps, reference_negative_logps: ``(B,)`` log-probabilities of each
            prompt's dispreferred response.
        beta: weight of the samples' mean log-ratio (> 0); alpha: weight of the negative's
            log-ratio (> 0). ``alpha = beta`` weighs both sides as DPO does.
        reduction: ``"mean"`` over prompts, ``"sum"``, or ``"none"`` for the ``(B,)`` losses.
    """
    check_tensor(policy_sample_logps, "policy_sample_logps", who=WHO, ndim=2, dtype="float",
                 non_empty=True, hint="shape (prompts, K samples per prompt)")
    batch, _ = policy_sample_logps.shape
    check_tensor(reference_sample_logps, "reference_sample_logps", who=WHO,
                 shape=tuple(policy_sample_logps.shape), dtype="float")
    for name, value in (("policy_negative_logps", policy_negative_logps),
                        ("reference_negative_logps", reference_negative_logps)):
        check_tensor(value, name, who=WHO, shape=(batch,), dtype="float",
                     hint="one dispreferred response per prompt")
    for name, value in (("policy_sample_logps", policy_sample_logps),
                        ("reference_sample_logps", reference_sample_logps),
                        ("policy_negative_logps", policy_negative_logps),
                        ("reference_negative_logps", reference_negative_logps)):
        check_finite(value, name, who=WHO, hint="log-probabilities must be finite (mask padding, "
                                                "not -inf)")
    beta = check_number(beta, "beta", who=WHO, low=0, low_open=True)
    alpha = check_number(alpha, "alpha", who=WHO, low=0, low_open=True)
    if reduction not in ("mean", "sum", "none"):
        raise PriorlabError(f"{WHO}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    sample_ratio = (policy_sample_logps - reference_sample_logps).mean(dim=1)
    negative_ratio = policy_negative_logps - reference_negative_logps
    losses = -F.logsigmoid(beta * sample_ratio - alpha * negative_ratio)
    return losses if reduction == "none" else losses.mean() if reduction == "mean" else losses.sum()


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor, *, inputs_embeds: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Log-probability of each response token under a causal LM, 0 elsewhere: ``(B, T - 1)``,
    entry ``t`` for token ``t + 1`` (predicted from everything before it).

    ``input_ids`` ``(B, T)`` holds prompt and response (any padding, left or right);
    ``attention_mask`` marks real tokens; ``response_mask`` marks the response tokens. Positions are
    counted over real tokens only, so a left-padded row scores as it would unpadded (as
    ``generate`` does). ``inputs_embeds`` ``(B, T, hidden)``, when given, is fed to the model
    instead of ``input_ids`` (which then only name the targets): e.g. cached hidden states of
    frozen lower layers, with ``model`` holding only the layers above them.
    """
    who = "token_logprobs"
    check_tensor(input_ids, "input_ids", who=who, ndim=2, dtype="integer", non_empty=True)
    shape = tuple(input_ids.shape)
    check_tensor(attention_mask, "attention_mask", who=who, shape=shape)
    check_tensor(response_mask, "response_mask", who=who, shape=shape)
    if shape[1] < 2:
        raise PriorlabError(f"{who}: sequences need at least 2 tokens (a prompt and a response), "
                            f"got length {shape[1]}")
    attention = attention_mask.bool()
    response = response_mask.bool()
    if (response & ~attention).any():
        raise PriorlabError(f"{who}: response_mask marks padding tokens (attention_mask 0)")
    if response[:, 0].any():
        raise PriorlabError(f"{who}: the first token cannot be a response token (nothing predicts it)")
    positions = (attention.long().cumsum(dim=1) - 1).clamp(min=0)
    if inputs_embeds is None:
        inputs = {"input_ids": input_ids}
    else:
        check_tensor(inputs_embeds, "inputs_embeds", who=who, shape=(*shape, None), dtype="float")
        inputs = {"inputs_embeds": inputs_embeds}
    logits = model(**inputs, attention_mask=attention.long(), position_ids=positions).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None])
    return logps.squeeze(-1) * response[:, 1:]


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's response tokens, ``log pi(y|x)``: ``(B,)``. Arguments
    as :func:`token_logprobs`."""
    return token_logprobs(model, input_ids, attention_mask, response_mask).sum(dim=1)
