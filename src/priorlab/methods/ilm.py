"""Paper card: Insertion Language Models (seed 63).

Components: :class:`priorlab.nn.insertion_lm.InsertionLM` (network with the insertion head and
stop classifier), :func:`~priorlab.nn.insertion_lm.drop_tokens` (training corruption),
:func:`~priorlab.nn.insertion_lm.insertion_loss` and
:func:`~priorlab.nn.insertion_lm.insertion_decode`. Star-graph data: :mod:`priorlab.data.star_graph`.
"""

from __future__ import annotations

from functools import partial

import torch

from priorlab.data.star_graph import star_graphs
from priorlab.nn.insertion_lm import (InsertionLM, SequenceTransformer, drop_tokens, insertion_decode,
                                      insertion_loss)
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Insertion Language Models: Sequence Generation with Arbitrary-Position Insertions",
    authors="Dhruvesh Patel et al.",
    venue="arXiv preprint",
    year=2025,
    arxiv="2505.05755",
    code_url="https://github.com/dhruvdcoder/ILM",
    licence="none stated in the official README",
    seed_id=63,
)

USAGE = """\
import torch
from priorlab.data.star_graph import star_graphs
from priorlab.nn.insertion_lm import (InsertionLM, SequenceTransformer, drop_tokens,
                                      insertion_decode, insertion_loss)

torch.manual_seed(0)
graphs = star_graphs(64, degree=2, path_length=3, num_nodes=8, seed=0)   # prompt + path
vocab, width = graphs.vocab, graphs.prompt.shape[1] + graphs.path_length + 2
model = InsertionLM(SequenceTransformer(vocab.size, width, pad_id=vocab.pad, dim=32, depth=1, heads=2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
for step in range(5):
    # drop a random subset of each path; the model learns to put every dropped token back
    tokens, targets = drop_tokens(graphs.prompt, graphs.path, pad_id=vocab.pad,
                                  vocab_size=vocab.size, generator=generator)
    loss = insertion_loss(model(tokens), targets, token_mask=vocab.node_tokens())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# insert one (gap, token) at a time until the stop classifier fires (PAD after the end)
paths = insertion_decode(model, graphs.prompt[:4], max_new=5, token_mask=vocab.node_tokens())
"""


def _tiny() -> tuple:
    graphs = star_graphs(16, degree=2, path_length=3, num_nodes=8, seed=0)
    tokens, targets = drop_tokens(graphs.prompt, graphs.path, pad_id=graphs.vocab.pad,
                                  vocab_size=graphs.vocab.size, generator=torch.Generator().manual_seed(0))
    return graphs, tokens, targets


def _tiny_model() -> InsertionLM:
    graphs, tokens, _ = _tiny()
    torch.manual_seed(0)
    return InsertionLM(SequenceTransformer(graphs.vocab.size, tokens.shape[1], pad_id=graphs.vocab.pad,
                                           dim=16, depth=1, heads=2))


def _example() -> Example:
    graphs, tokens, targets = _tiny()
    causal = SequenceTransformer(graphs.vocab.size, 8, pad_id=graphs.vocab.pad, dim=8, heads=2, causal=True)
    return Example(
        model_fn=_tiny_model,
        batch=(tokens, targets),
        loss_fn=partial(insertion_loss, token_mask=graphs.vocab.node_tokens()),
        optimizer_fn=lambda params: torch.optim.AdamW(params, lr=1e-3),
        adapter_fn=None,
        # a training objective plus network, no strength knob with an identity point
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: InsertionLM(causal),
            lambda: SequenceTransformer(10, 8, pad_id=0, dim=10, heads=3),
            lambda: SequenceTransformer(10, 8, pad_id=12),
            lambda: _tiny_model()(tokens.float()),
            lambda: _tiny_model()(torch.cat([tokens, tokens], dim=1)),
            lambda: drop_tokens(graphs.prompt, graphs.path[:3], pad_id=graphs.vocab.pad,
                                vocab_size=graphs.vocab.size),
            lambda: insertion_loss(_tiny_model()(tokens), targets._replace(counts=targets.counts * 2)),
            lambda: insertion_loss(_tiny_model()(tokens), targets, stop_weight=-1.0),
            lambda: insertion_decode(_tiny_model(), graphs.prompt, max_new=0),
            lambda: star_graphs(4, degree=3, path_length=5, num_nodes=10),
        ),
    )


CARD = register(MethodCard(
    id="ilm",
    name="Insertion Language Model (ILM)",
    family="S: sparsity, compression, language models",
    kind="module",
    paper=PAPER,
    summary=("A sequence model that generates by inserting one token at a time at any position: a "
             "bidirectional transformer scores every (gap, token) pair with one joint softmax, and "
             "a stop classifier on the CLS position decides when the sequence is complete. Trained "
             "by deleting a random subset of tokens and fitting the joint distribution of the "
             "deleted ones (count(gap, token) / n_deleted) plus the stop target 'nothing deleted'."),
    usage=USAGE,
    hyperparameters=(
        "No method hyperparameters beyond the network's: stop_weight (weight of the stop "
        "classifier's BCE, default 1, the official sum of the two losses), stop_threshold for "
        "decoding (default 0.5), max_new (insertion budget). token_mask restricts insertable "
        "tokens (the official code suppresses special tokens the same way). The deletion "
        "distribution: number deleted uniform on {0..L}, then a uniform subset. Official star-graph "
        "training (scripts/train_ilm_stopping_star_small.sh): batch 64, lr 1e-4 constant after "
        "500 warmup steps, 50,000 steps, greedy (top-1) decoding."),
    deviations=(
        "Written from the paper's description and the official loss (ilm_v2.py), not its code. "
        "Number of deleted tokens ~ Uniform{0..L} then a uniform subset (the official collator's "
        "noise schedule was not checked in detail). Greedy (argmax) insertion and a fixed 0.5 stop "
        "threshold; the official predictor also supports top-k/top-p sampling. Backbone: a small "
        "pre-norm nn.TransformerEncoder with learned absolute positions (positions re-indexed "
        "each step, as the official code recomputes positions of kept tokens) instead of the "
        "official rotary DiT; no CLS/BOS split (the CLS token is the first prompt token). The "
        "stop classifier is a linear layer on the CLS feature (official: a small head on CLS)."),
    claim_scope=(
        "The paper claims ILMs beat ARMs and MDMs on planning tasks (star graphs of three "
        "difficulties, Zebra puzzles) and match ARMs / beat MDMs on unconditional text generation "
        "(LM1B, TinyStories) while infilling arbitrary lengths. Here: only the easy path-star "
        "task, tiny transformers on CPU, ARM vs MDM vs ILM of the same size and budget."),
    component=InsertionLM,
    adapter=None,
    example=_example,
    reproduction="p063_ilm",
    tags=("language-model", "insertion", "planning", "non-autoregressive"),
))
