"""Paper card: D2O, Distributional Dispreference Optimization (seed 9).

Component: :func:`priorlab.functional.dispreference.d2o_loss` (the loss from sequence
log-probabilities), with :func:`priorlab.functional.dispreference.sequence_logprobs` to get those
from a causal LM. No adapter: the loss is a function the training loop calls.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.functional.dispreference import d2o_loss, sequence_logprobs
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title=("Negating Negatives: Alignment with Human Negative Samples via Distributional "
           "Dispreference Optimization"),
    authors="Shitong Duan et al.",
    venue="arXiv (Fudan University, Microsoft Research Asia)",
    year=2024,
    arxiv="2403.03419",
    code_url="",
    licence="no official code found",
    seed_id=9,
)

USAGE = """\
import copy
import torch
from priorlab.functional.dispreference import d2o_loss, sequence_logprobs
from priorlab.llm import tiny_llama

policy = tiny_llama(vocab_size=64, hidden=16, layers=1, heads=2, intermediate=32, seed=0)
reference = copy.deepcopy(policy).requires_grad_(False)  # frozen pi_ref
# per prompt: K = 3 samples drawn from the reference and one labelled dispreferred response;
# rows hold prompt + response tokens, response_mask marks the response (here the last 4 tokens)
B, K, T = 2, 3, 10
ids = torch.randint(64, (B * (K + 1), T))
attention = torch.ones_like(ids)
response = torch.zeros_like(ids)
response[:, -4:] = 1
is_negative = torch.arange(B * (K + 1)) % (K + 1) == K  # rows prompt-major, negative last
with torch.no_grad():
    ref = sequence_logprobs(reference, ids, attention, response).view(B, K + 1)
optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
for step in range(5):
    logps = sequence_logprobs(policy, ids, attention, response).view(B, K + 1)
    loss = d2o_loss(logps[:, :K], ref[:, :K], logps[:, K], ref[:, K], beta=0.1, alpha=0.1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# In any trainer (e.g. a TRL-style DPO loop): sample the K responses from the reference once,
# precompute the reference log-probs, and swap the DPO loss for d2o_loss.
"""

_B, _K, _T, _VOCAB = 2, 2, 8, 32


class _ScoredLM(nn.Module):
    """A tiny causal LM returning each packed row's response log-probability, for the contract
    tests: input ``(rows, 3, T)`` stacks input ids, attention mask and response mask."""

    def __init__(self):
        super().__init__()
        from priorlab.llm import tiny_llama

        self.lm = tiny_llama(vocab_size=_VOCAB, hidden=16, layers=1, heads=2, intermediate=32, seed=0)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return sequence_logprobs(self.lm, packed[:, 0], packed[:, 1], packed[:, 2])


def _packed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(_VOCAB, (_B * (_K + 1), _T), generator=generator)
    response = torch.zeros_like(ids)
    response[:, _T // 2:] = 1
    packed = torch.stack([ids, torch.ones_like(ids), response], dim=1)
    with torch.no_grad():  # the reference is the model before training
        reference = _ScoredLM()(packed).view(_B, _K + 1)
    return packed, reference


def _example_loss(logps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    logps = logps.view(_B, _K + 1)
    return d2o_loss(logps[:, :_K], reference[:, :_K], logps[:, _K], reference[:, _K],
                    beta=0.1, alpha=0.1)


def _example() -> Example:
    logps, ref = torch.zeros(2, 3), torch.zeros(2, 3)
    return Example(
        model_fn=_ScoredLM,
        batch=_packed_batch(),
        loss_fn=_example_loss,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=1e-2),
        adapter_fn=None,
        # alpha = beta = 0 is not a valid D2O (the loss would be the constant log 2); the DPO
        # special case (K = 1, alpha = beta) is checked in tests/test_d2o.py.
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: d2o_loss(logps, ref, logps[:, 0], ref[:, 0], beta=0.0),
            lambda: d2o_loss(logps, ref, logps[:, 0], ref[:, 0], alpha=-1.0),
            lambda: d2o_loss(logps, ref, logps[:, 0], ref[:, 0], beta=float("nan")),
            lambda: d2o_loss(logps, ref[:, :2], logps[:, 0], ref[:, 0]),
            lambda: d2o_loss(logps, ref, logps, ref[:, 0]),
            lambda: d2o_loss(logps[0], ref[0], logps[:, 0], ref[:, 0]),
            lambda: d2o_loss(logps, ref, logps[:, 0], torch.full((2,), -float("inf"))),
            lambda: d2o_loss(logps, ref, logps[:, 0], ref[:, 0], reduction="avg"),
            lambda: d2o_loss(logps.long(), ref, logps[:, 0], ref[:, 0]),
        ),
    )


CARD = register(MethodCard(
    id="d2o",
    name="D2O (Distributional Dispreference Optimization)",
    family="S: sparsity, compression, language models",
    kind="function",
    paper=PAPER,
    summary=("Alignment from labelled negatives only: for each prompt, K responses sampled from "
             "the reference are anchors and the loss is -log sigmoid(beta/K sum_i "
             "log pi(y_i|x)/pi_ref(y_i|x) - alpha log pi(y_l|x)/pi_ref(y_l|x)), pushing the "
             "policy away from the negatives' distribution while the self-samples keep it close "
             "to the reference (a distributional preference model; K = 1, alpha = beta is DPO "
             "with one self-generated 'preferred' response)."),
    usage=USAGE,
    hyperparameters=(
        "beta: weight of the anchors' mean log-ratio; alpha: weight of the negative's log-ratio "
        "(both > 0; alpha = beta balances them as DPO does, alpha > beta pushes harder away from "
        "the negatives). K: samples per prompt (more anchors give a better estimate of the "
        "reference distribution). The paper's defaults could not be retrieved; beta = alpha = "
        "0.1 (DPO's usual beta) is used here, K = 4."),
    deviations=(
        "No official code was found, and only the abstract was reachable, so the loss follows "
        "the formula as given (catalog line 9): one frozen reference (the model before training) "
        "serves as both of the paper's references pi_r^- (anchors) and pi_r^+ (negative); the K "
        "anchors are sampled once from the reference before training (offline), unlabelled, so "
        "some may themselves be dispreferred. The reproduction trains only the last 4 of 30 "
        "decoder layers and the final norm of SmolLM2-135M (CPU budget), on a rule-labelled "
        "stand-in (a banned-word list) for human-annotated harmful responses."),
    claim_scope=(
        "The paper aligns 7B chat models (Alpaca-7B) with human-annotated harmful responses "
        "(PKU-SafeRLHF) and reports, against the latest baselines, less harmful and more "
        "informative responses at comparable generation quality, with more stable and faster "
        "training. Here: SmolLM2-135M-Instruct answering 'In one sentence, tell me how you feel "
        "about <annoyance>'; a response is dispreferred when it uses a banned word (first-person "
        "singular: the assistant talking about itself). We test the "
        "reduction in dispreferred generations against the reference, instance-level DPO and "
        "SFT-away (likelihood on anchors + unlikelihood on negatives) with a perplexity guard; "
        "informativeness, stability and scale are not tested."),
    component=d2o_loss,
    adapter=None,
    example=_example,
    reproduction="p009_d2o",
    tags=("alignment", "preference-optimisation", "negatives-only", "llm"),
))
