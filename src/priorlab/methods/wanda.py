"""Paper card: Wanda, pruning by weights and activations (the baseline of seed 64, DSnoT).

Components: :func:`priorlab.sparsity.pruning.wanda_mask` (one layer) and
:func:`priorlab.sparsity.pruning.prune_model` (a whole causal LM, calibrated layer by layer).
Wanda is not in the paper catalog; it is registered under DSnoT's seed id as the baseline its
reproduction compares against.
"""

from __future__ import annotations

from priorlab.registry import MethodCard, Paper, register
from priorlab.sparsity.pruning import wanda_mask

PAPER = Paper(
    title="A Simple and Effective Pruning Approach for Large Language Models",
    authors="Mingjie Sun et al.",
    venue="ICLR",
    year=2024,
    arxiv="2306.11695",
    code_url="https://github.com/locuslab/wanda",
    licence="MIT",
    seed_id=64,
)

USAGE = """\
import torch
from priorlab.llm import perplexity, tiny_llama
from priorlab.sparsity.pruning import InputStats, prune_model, wanda_mask

# a whole model, in place: every linear layer of the decoder blocks to 50% per output row
model = tiny_llama(seed=0)  # or priorlab.llm.load_pretrained() / any Llama-style transformers LM
calibration = torch.randint(256, (8, 64))  # (sequences, tokens) of calibration text
prune_model(model, calibration, sparsity=0.5, method="wanda")  # or method="magnitude"
print(perplexity(model, calibration.flatten(), block_size=64))

# one layer: |W_ij| * ||X_j||_2, the lowest half of each output row pruned (True = pruned)
weight, stats = torch.randn(16, 64), InputStats(64)
stats.update(torch.randn(4, 32, 64))  # the layer's inputs: (sequences, tokens, features)
mask = wanda_mask(weight, stats.sq_norm, 0.5)
weight[mask] = 0
"""

CARD = register(MethodCard(
    id="wanda",
    name="Wanda (pruning by weights and activations)",
    family="S: sparsity, compression, language models",
    kind="function",
    paper=PAPER,
    summary=("One-shot LLM pruning without weight updates: score S_ij = |W_ij| * ||X_j||_2 (the "
             "weight's magnitude times its input feature's norm over calibration tokens) and "
             "zero the lowest-scoring fraction of every output row. Layers are calibrated in "
             "order, each on inputs that flow through the already-pruned earlier layers."),
    usage=USAGE,
    hyperparameters=(
        "sparsity: fraction of each output row pruned (the paper: 50%, up to 80% in ablations). "
        "Calibration: the paper uses 128 sequences of 2048 C4 tokens and finds Wanda robust to "
        "far fewer. prune_model's batch_size only sets how many calibration sequences go "
        "through a layer at once. method='magnitude' ranks |W_ij| per row instead."),
    deviations=(
        "Unstructured sparsity only (the official N:M option is not ported). Magnitude "
        "pruning ranks per output row (the initial mask DSnoT's code starts from), whereas the "
        "official magnitude baseline thresholds a whole layer. Statistics in float64, the "
        "model in float32 (official: float16). Llama-style models only (model.model.layers)."),
    claim_scope=(
        "The Wanda paper prunes LLaMA-1/2 7B-70B to 50% and matches SparseGPT's WikiText-2 "
        "perplexity without weight updates. It is the baseline of DSnoT's reproduction here "
        "(SmolLM2-135M-Instruct, 50/60/70%); no claim of its own is tested."),
    component=wanda_mask,
    adapter=None,
    example=None,
    reproduction="p064_dsnot",
    tags=("pruning", "sparsity", "llm", "baseline"),
))
