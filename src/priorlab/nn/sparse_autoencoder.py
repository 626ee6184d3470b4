"""Sparse autoencoders (SAEs) on an LLM's residual stream, and the data pipelines FAST compares.

Li et al., "Training Superior Sparse Autoencoders for Instruct Models" (arXiv:2506.07691), FAST:
Finetuning-aligned Sequential Training. An SAE is trained on the residual-stream activations of
an instruct model; block training (BT) concatenates the training text and cuts it into fixed-length
blocks that cross sample boundaries, FAST feeds every chat-templated conversation to the model as
its own sequence (special tokens kept, truncated, padded in a batch) so the activations the SAE
learns are the ones the instruct model produces in use.

The SAE is the paper's "Standard" ReLU SAE (its Eq. for z and x-hat):
``z = ReLU(W_enc (x - b_dec) + b_enc)``, ``x_hat = W_dec z + b_dec``, trained on
``||x - x_hat||^2 + lambda * sum_i z_i ||W_dec[:, i]||`` -- the L1 penalty weighted by each
decoder column's norm, so the sparsity cost cannot be dodged by shrinking codes and growing
decoder columns. Inputs are scaled by one constant so their mean norm is sqrt(d_in) (fitted on the
training activations) and the L1 coefficient transfers across layers and models.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


class SparseAutoencoder(nn.Module):
    """A ReLU SAE ``d_in -> d_sae -> d_in`` with a decoder-norm-weighted L1 penalty.

    Initialisation (Anthropic's April-2024 recipe): decoder columns random with norm 0.1, encoder
    = decoder transposed, biases zero. ``scale`` (a buffer, default 1) multiplies inputs before
    encoding and divides reconstructions after decoding, so callers always see raw units.
    """

    def __init__(self, d_in: int, d_sae: int, l1_coefficient: float = 2.0, seed: int = 0):
        super().__init__()
        who = "SparseAutoencoder"
        d_in = check_number(d_in, "d_in", who=who, low=1, integer=True)
        d_sae = check_number(d_sae, "d_sae", who=who, low=1, integer=True)
        self.l1_coefficient = check_number(l1_coefficient, "l1_coefficient", who=who, low=0.0)
        generator = torch.Generator().manual_seed(int(seed))
        decoder = torch.randn(d_in, d_sae, generator=generator)
        decoder = 0.1 * decoder / decoder.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(()))

    def _check(self, x: torch.Tensor) -> None:
        check_tensor(x, "x", who="SparseAutoencoder", dtype="float", finite=True)
        if x.shape[-1] != self.W_dec.shape[0]:
            raise PriorlabError(f"SparseAutoencoder: x has {x.shape[-1]} features in its last "
                                f"dimension, the SAE expects d_in={self.W_dec.shape[0]}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations z (..., d_sae) of raw inputs x (..., d_in)."""
        self._check(x)
        return torch.relu((x * self.scale - self.b_dec) @ self.W_enc.t() + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction in raw units of the inputs."""
        return (z @ self.W_dec.t() + self.b_dec) / self.scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat, z)``."""
        z = self.encode(x)
        return self.decode(z), z

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss in scaled units: squared error summed over features, averaged over
        tokens, plus lambda * sum_i z_i ||W_dec[:, i]||. Returns (loss, parts)."""
        x_hat, z = self(x)
        squared = ((x_hat - x) * self.scale).pow(2).sum(-1).mean()
        sparsity = (z * self.W_dec.norm(dim=0)).sum(-1).mean()
        loss = squared + self.l1_coefficient * sparsity
        return loss, {"squared_error": squared.detach().item(), "l1": sparsity.detach().item(),
                      "l0": float((z > 0).float().sum(-1).mean())}


def fit_sae(sae: SparseAutoencoder, activations: torch.Tensor, steps: int = 1000,
            batch_size: int = 256, lr: float = 1e-3, l1_warmup: float = 0.05, seed: int = 0) -> list[float]:
    """Train ``sae`` in place on rows of ``activations`` (n, d_in) drawn in random order (the
    paper's mixing buffer shuffles activations the same way). Adam, gradient norm clipped at 1,
    the L1 coefficient warmed up linearly over the first ``l1_warmup`` of the steps and the
    learning rate decayed linearly to zero over the last 20% (Anthropic's recipe). Sets
    ``sae.scale`` first. Returns the loss of every step."""
    who = "fit_sae"
    check_tensor(activations, "activations", who=who, ndim=2, dtype="float", finite=True, non_empty=True)
    steps = check_number(steps, "steps", who=who, low=1, integer=True)
    batch_size = check_number(batch_size, "batch_size", who=who, low=1, integer=True)
    lr = check_number(lr, "lr", who=who, low=0.0, low_open=True)
    l1_warmup = check_number(l1_warmup, "l1_warmup", who=who, low=0.0, high=1.0)
    sae._check(activations)
    with torch.no_grad():
        sae.scale.fill_(math.sqrt(activations.shape[1]) / float(activations.norm(dim=1).mean()))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    decay_from = int(0.8 * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 1.0 if t < decay_from else (steps - t) / max(steps - decay_from, 1))
    generator = torch.Generator().manual_seed(int(seed))
    target_l1, warmup_steps, history = sae.l1_coefficient, max(int(l1_warmup * steps), 1), []
    order, cursor = torch.randperm(len(activations), generator=generator), 0
    try:
        for step in range(steps):
            if cursor + batch_size > len(order):
                order, cursor = torch.randperm(len(activations), generator=generator), 0
            batch = activations[order[cursor:cursor + batch_size]]
            cursor += batch_size
            sae.l1_coefficient = target_l1 * min(1.0, (step + 1) / warmup_steps)
            loss, _ = sae.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            history.append(loss.detach().item())
    finally:
        sae.l1_coefficient = target_l1
    return history


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, activations: torch.Tensor) -> dict[str, float]:
    """``mse`` (mean over tokens and features, raw units), ``normalised_mse`` (squared error over
    the squared deviation from the feature means: the fraction of variance unexplained) and
    ``l0`` (mean number of active features per token)."""
    check_tensor(activations, "activations", who="reconstruction_metrics", ndim=2, non_empty=True)
    x_hat, z = sae(activations)
    error = (x_hat - activations).pow(2).sum()
    spread = (activations - activations.mean(0)).pow(2).sum()
    return {"mse": float(error / activations.numel()), "normalised_mse": float(error / spread),
            "l0": float((z > 0).float().sum(-1).mean())}


def _decoder_layers(model) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise PriorlabError("expected a transformers Llama-style causal LM (model.model.layers), "
                            f"got {type(model).__name__}")
    return layers


def _check_layer(model, layer: int) -> nn.Module:
    layers = _decoder_layers(model)
    layer = check_number(layer, "layer", who="residual stream", low=0, high=len(layers) - 1, integer=True)
    return layers[layer]


def pad_batch(sequences: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors into ``(ids, attention_mask)`` of shape (batch, longest)."""
    if not sequences:
        raise PriorlabError("pad_batch: no sequences given")
    for i, seq in enumerate(sequences):
        check_tensor(seq, f"sequences[{i}]", who="pad_batch", ndim=1, dtype="integer", non_empty=True)
    longest = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), longest), int(pad_id), dtype=torch.long)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, :len(seq)], mask[i, :len(seq)] = seq, 1
    return ids, mask


class _StopForward(Exception):
    """Raised by the collector's hook: layers after the hooked one are not needed."""


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def collect_residual(model, layer: int, sequences: list[torch.Tensor], batch_size: int = 8,
                     skip_first: int = 1) -> list[torch.Tensor]:
    """Residual-stream activations after decoder layer ``layer`` (a forward hook) for each 1-D id
    sequence, run in right-padded batches (padding never reaches a real token: causal attention
    and the attention mask). Returns one (len - skip_first, d_model) float tensor per sequence.
    ``skip_first`` drops each sequence's first positions: the first token is the attention sink,
    whose norm is ~100x the others' in SmolLM2, and SAE practice leaves it out."""
    module = _check_layer(model, layer)
    batch_size = check_number(batch_size, "batch_size", who="collect_residual", low=1, integer=True)
    skip_first = check_number(skip_first, "skip_first", who="collect_residual", low=0, integer=True)
    captured = {}

    def hook(_module, _inputs, output):
        captured["hidden"] = _hidden(output).detach()
        raise _StopForward

    device = next(model.parameters()).device
    handle = module.register_forward_hook(hook)
    out = []
    try:
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            ids, mask = pad_batch(chunk)
            try:
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
            except _StopForward:
                pass
            hidden = captured.pop("hidden").float().cpu()
            out += [hidden[i, skip_first:len(seq)] for i, seq in enumerate(chunk)]
    finally:
        handle.remove()
    return out


@torch.no_grad()
def spliced_loss(model, layer: int, sequences: list[torch.Tensor], sae: SparseAutoencoder | None = None,
                 batch_size: int = 8, skip_first: int = 1) -> float:
    """Mean next-token cross-entropy of the model over the real tokens of ``sequences``, with the
    output of decoder layer ``layer`` replaced by the SAE's reconstruction (``sae=None``: the
    clean model). The first ``skip_first`` positions, which the SAE is not trained on, keep
    their true activations."""
    module = _check_layer(model, layer)
    batch_size = check_number(batch_size, "batch_size", who="spliced_loss", low=1, integer=True)

    def hook(_module, _inputs, output):
        hidden = _hidden(output)
        patched = hidden.clone()
        patched[:, skip_first:] = sae(hidden[:, skip_first:].float())[0].to(hidden.dtype)
        return (patched,) + tuple(output[1:]) if isinstance(output, tuple) else patched

    device = next(model.parameters()).device
    handle = module.register_forward_hook(hook) if sae is not None else None
    total, count = 0.0, 0
    try:
        for start in range(0, len(sequences), batch_size):
            ids, mask = pad_batch(sequences[start:start + batch_size])
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       targets.reshape(-1), reduction="sum"))
            count += int((targets != -100).sum())
    finally:
        if handle is not None:
            handle.remove()
    return total / max(count, 1)


def chat_ids(tokenizer, messages: list[dict], max_len: int) -> torch.Tensor:
    """One conversation formatted with the tokenizer's chat template (special tokens kept),
    truncated to ``max_len`` tokens: a FAST training sequence."""
    max_len = check_number(max_len, "max_len", who="chat_ids", low=2, integer=True)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[:max_len], dtype=torch.long)


def pack_blocks(sequences: list[torch.Tensor], block_size: int) -> list[torch.Tensor]:
    """Block training's input: the sequences concatenated in order and cut into blocks of
    ``block_size`` tokens that cross sequence boundaries (the last partial block is dropped)."""
    block_size = check_number(block_size, "block_size", who="pack_blocks", low=2, integer=True)
    if not sequences:
        raise PriorlabError("pack_blocks: no sequences given")
    stream = torch.cat(list(sequences))
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise PriorlabError(f"pack_blocks: {len(stream)} tokens make no block of {block_size}")
    return list(stream[:n_blocks * block_size].view(n_blocks, block_size))
