"""Half fine-tuning (HFT): train a random half of each block's matrices, freeze the rest.

Hui et al., "HFT: Half Fine-Tuning for Large Language Models", arXiv 2404.18466 (2024). At the
start of every fine-tuning stage HFT draws, in each transformer block, half of the self-attention
matrices (2 of W_q, W_k, W_v, W_o) and half of the feed-forward matrices to update and freezes
the others, so that the frozen half keeps what earlier stages learned. The paper interprets the
selection as a regularisation term; in our notation a stage minimises the task loss subject to
``M ⊙ (θ - θ_prev) = 0`` for a random binary mask ``M`` over whole matrices covering half of
them, with ``M`` re-drawn per stage.

A :class:`HalfLayout` says where the blocks are and which matrices form each category; presets
exist for :class:`priorlab.nn.attention_vit.AttentionViT` and for ``transformers`` Llama models
(``LlamaForCausalLM``, e.g. :func:`priorlab.llm.tiny_llama` or SmolLM2). A matrix here is a
submodule (its weight and bias freeze together). Parameters outside the categories (embeddings,
norms, the head) keep their ``requires_grad``: the caller decides about them.

``stratified=False`` gives the control arm of the reproduction: the same number of matrices
frozen, but drawn from all blocks and categories pooled, not half per block and per category.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean


@dataclass(frozen=True)
class HalfLayout:
    """Where HFT draws its halves: ``blocks`` is the dotted path of the ``nn.ModuleList`` of
    transformer blocks; ``categories`` are tuples of submodule paths inside one block (e.g. the
    attention projections, the MLP linears), each halved separately."""

    blocks: str
    categories: tuple[tuple[str, ...], ...]


LAYOUTS = {
    "attention_vit": HalfLayout(
        blocks="blocks",
        categories=(("attn.query", "attn.key", "attn.value", "attn.out"), ("mlp.0", "mlp.2"))),
    "llama": HalfLayout(
        blocks="model.layers",
        categories=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
                    ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))),
}


@dataclass(frozen=True)
class HalfSelection:
    """The outcome of one draw: module paths (relative to the model) that train and that froze."""

    trained: tuple[str, ...]
    frozen: tuple[str, ...]

    def frozen_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The frozen matrices' parameters by full name (e.g. for checking they did not move)."""
        return {f"{path}.{name}": p for path in self.frozen
                for name, p in model.get_submodule(path).named_parameters()}


def _layout(layout: str | HalfLayout) -> HalfLayout:
    if isinstance(layout, HalfLayout):
        return layout
    if isinstance(layout, str) and layout in LAYOUTS:
        return LAYOUTS[layout]
    raise did_you_mean(str(layout), LAYOUTS, "layout")


def _block_matrices(model: nn.Module, layout: HalfLayout) -> list[list[list[str]]]:
    """Full module paths per block, per category; checks that every one exists."""
    try:
        blocks = model.get_submodule(layout.blocks)
    except AttributeError:
        raise PriorlabError(f"half_tuning: the model ({type(model).__name__}) has no submodule "
                            f"{layout.blocks!r} holding the blocks; pass the layout that matches "
                            f"it (presets: {', '.join(LAYOUTS)})") from None
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise PriorlabError(f"half_tuning: {layout.blocks!r} must be a non-empty ModuleList of "
                            f"blocks, got {type(blocks).__name__}")
    if not layout.categories or any(len(c) < 2 for c in layout.categories):
        raise PriorlabError("half_tuning: every category needs at least two matrices to halve, "
                            f"got {layout.categories}")
    plan = []
    for i, block in enumerate(blocks):
        names = dict(block.named_modules())
        per_block = []
        for category in layout.categories:
            missing = [m for m in category if m not in names]
            if missing:
                raise did_you_mean(missing[0], [n for n in names if n], f"matrix in block {i}")
            per_block.append([f"{layout.blocks}.{i}.{m}" for m in category])
        plan.append(per_block)
    return plan


def _half(n: int, generator: torch.Generator) -> int:
    """How many of ``n`` matrices train: n/2, or for odd n floor or ceil with equal odds so
    that half train on average."""
    extra = int(torch.randint(0, 2, (1,), generator=generator)) if n % 2 else 0
    return n // 2 + extra


def draw_half(model: nn.Module, layout: str | HalfLayout = "attention_vit", *,
              generator: torch.Generator | None = None, stratified: bool = True) -> HalfSelection:
    """Draw which matrices train at this stage (nothing is changed on ``model``).

    ``stratified`` (HFT): in every block, half of each category trains. Otherwise the same total
    number of matrices trains, drawn uniformly from all blocks and categories pooled.
    ``generator`` drives the draw (default: a fresh one seeded 0); pass one generator through
    all stages to get a different, reproducible half per stage.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    plan = _block_matrices(model, _layout(layout))
    trained: list[str] = []
    if stratified:
        for per_block in plan:
            for category in per_block:
                order = torch.randperm(len(category), generator=generator).tolist()
                trained += [category[j] for j in order[:_half(len(category), generator)]]
    else:
        pooled = [m for per_block in plan for category in per_block for m in category]
        count = sum(_half(len(c), generator) for per_block in plan for c in per_block)
        order = torch.randperm(len(pooled), generator=generator).tolist()
        trained = [pooled[j] for j in order[:count]]
    everything = [m for per_block in plan for category in per_block for m in category]
    chosen = set(trained)
    return HalfSelection(trained=tuple(m for m in everything if m in chosen),
                         frozen=tuple(m for m in everything if m not in chosen))


def apply_half(model: nn.Module, selection: HalfSelection) -> HalfSelection:
    """Unfreeze the selection's trained matrices and freeze the others (gradients cleared), so
    an optimiser over ``model.parameters()`` leaves the frozen half exactly where it is."""
    for path in selection.trained:
        model.get_submodule(path).requires_grad_(True)
    for p in selection.frozen_parameters(model).values():
        p.requires_grad_(False)
        p.grad = None
    return selection


def half_fine_tune(model: nn.Module, layout: str | HalfLayout = "attention_vit", *,
                   generator: torch.Generator | None = None,
                   stratified: bool = True) -> HalfSelection:
    """Start an HFT stage: draw a fresh half (:func:`draw_half`) and apply it
    (:func:`apply_half`). Call once per fine-tuning stage, before building the optimiser."""
    return apply_half(model, draw_half(model, layout, generator=generator, stratified=stratified))


def unfreeze_all(model: nn.Module) -> None:
    """Undo HFT's freezing: every parameter trains again (full fine-tuning)."""
    model.requires_grad_(True)
