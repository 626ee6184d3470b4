"""Paper card: FAST, Finetuning-aligned Sequential Training of SAEs for instruct models (seed 60).

Components: :class:`priorlab.nn.sparse_autoencoder.SparseAutoencoder` (the Standard ReLU SAE) with
:func:`~priorlab.nn.sparse_autoencoder.fit_sae`; the data pipelines are
:func:`~priorlab.nn.sparse_autoencoder.chat_ids` (FAST: one chat-templated conversation per
sequence) and :func:`~priorlab.nn.sparse_autoencoder.pack_blocks` (block training);
:func:`~priorlab.nn.sparse_autoencoder.collect_residual` and
:func:`~priorlab.nn.sparse_autoencoder.spliced_loss` read and patch a Llama layer's residual stream.
"""

from __future__ import annotations

import torch

from priorlab.nn.sparse_autoencoder import SparseAutoencoder
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Training Superior Sparse Autoencoders for Instruct Models",
    authors="Jiaming Li, Haoran Ye, Yukun Chen, Xinyue Li, Lei Zhang, Hamid Alinejad-Rokny, "
            "Jimmy Chih-Hsien Peng, Min Yang",
    venue="arXiv preprint",
    year=2025,
    arxiv="2506.07691",
    code_url="https://github.com/Geaming2002/FAST",
    licence="not checked (the repository is not in the stored index)",
    seed_id=60,
)

USAGE = """\
import torch
from priorlab.llm import tiny_llama
from priorlab.nn.sparse_autoencoder import (SparseAutoencoder, collect_residual, fit_sae,
                                            pack_blocks, reconstruction_metrics, spliced_loss)

model = tiny_llama(seed=0)  # or priorlab.llm.load_pretrained() (SmolLM2-135M-Instruct)
# FAST: one sequence per conversation, e.g. chat_ids(tokenizer, messages, max_len) with the
# tokenizer's chat template; block training would feed pack_blocks(conversations, 32) instead
conversations = [torch.randint(256, (int(n),)) for n in torch.randint(20, 60, (8,))]
train = torch.cat(collect_residual(model, layer=1, sequences=conversations))  # (tokens, 32)
sae = SparseAutoencoder(d_in=32, d_sae=128, l1_coefficient=2.0, seed=0)
fit_sae(sae, train, steps=20, batch_size=64, lr=1e-3)
print(reconstruction_metrics(sae, train), spliced_loss(model, 1, conversations, sae))
blocks = pack_blocks(conversations, block_size=32)  # the baseline's sequences
"""


def _example() -> Example:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, 8, generator=generator)

    def model_fn():
        return SparseAutoencoder(8, 16, l1_coefficient=1.0, seed=0)

    return Example(
        model_fn=model_fn,
        batch=(inputs, inputs),
        # the SAE's own objective: squared error + decoder-norm-weighted L1 (the target is x)
        loss_fn=lambda output, target: ((output[0] - target).pow(2).sum(-1).mean()
                                        + (output[1].sum(-1)).mean()),
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=1e-3),
        bad_args=(
            lambda: SparseAutoencoder(0, 16),
            lambda: SparseAutoencoder(8, 16, l1_coefficient=-1.0),
            lambda: SparseAutoencoder(8, 16, l1_coefficient=float("nan")),
            lambda: model_fn()(torch.randn(4, 7)),
            lambda: model_fn()(torch.full((4, 8), float("nan"))),
        ),
    )


CARD = register(MethodCard(
    id="fast-sae",
    name="FAST (Finetuning-aligned Sequential Training of SAEs)",
    family="S: sparsity, compression, language models",
    kind="system",
    paper=PAPER,
    summary=("A data pipeline for training sparse autoencoders on instruct models: instead of "
             "concatenating the training text and cutting it into fixed-length blocks (block "
             "training), every SFT conversation is formatted with the model's chat template "
             "(special tokens kept) and run through the model as its own sequence, so the SAE "
             "learns from the activations the instruct model actually produces; the activations "
             "are then shuffled in a mixing buffer and train a standard SAE."),
    usage=USAGE,
    hyperparameters=(
        "SAE: ReLU, d_sae = expansion x d_in (the paper trains several widths; 4 here), L1 "
        "coefficient 2 on z_i ||W_dec[:, i]|| with inputs scaled to mean norm sqrt(d_in), warmed "
        "up over the first 5% of steps; Adam lr 1e-3, linear decay over the last 20%, gradient "
        "norm clipped at 1; decoder columns initialised with norm 0.1 and the encoder as its "
        "transpose. Data: FAST truncates each conversation to max_len tokens and pads batches; "
        "block training cuts the concatenated stream into block_size-token blocks. The first "
        "position of every sequence (the attention sink) is neither trained on nor spliced."),
    deviations=(
        "The official code (Geaming2002/FAST) is not in the stored index, so this follows the "
        "paper's description. Conversations: no SFT dataset ships offline, so each Python "
        "reference-manual topic is split at blank lines into chunks of <= 600 characters, and "
        "chunk k of topic H becomes [user: 'Explain H.' (k = 0) / 'Tell me more about H.' (k > 0); "
        "assistant: the chunk], formatted with SmolLM2-Instruct's chat template (which adds its "
        "default system turn). The mixing activation buffer is replaced by shuffling all of a "
        "seed's activations in memory (they fit). Only the Standard ReLU SAE (no JumpReLU). "
        "The first token of every sequence is excluded from training, evaluation and splicing "
        "(its norm is ~170x the others' in SmolLM2; the paper's handling was not retrievable). "
        "Inputs are normalised by one scalar (SAELens practice); the paper's normalisation was "
        "not retrievable."),
    claim_scope=(
        "The paper claims lower token-reconstruction MSE than block training on pretraining "
        "(BT(P)) or finetuning data (BT(F)) for 1B-8B instruct models (Qwen2.5-7B-Instruct: 0.6468 "
        "vs 5.1985 / 1.5096), Delta loss near zero, more interpretable features and useful "
        "special-token interventions. Here: SmolLM2-135M-Instruct layer 12, FAST vs BT(F) on the "
        "same ~5.6k tokens per seed, held-out conversations; reconstruction (normalised MSE) and "
        "the spliced model's loss. BT(P), interpretability and steering are not tested."),
    component=SparseAutoencoder,
    adapter=None,
    example=_example,
    reproduction="p060_fast_sae",
    tags=("sparse-autoencoder", "interpretability", "language-models", "data-pipeline"),
))
