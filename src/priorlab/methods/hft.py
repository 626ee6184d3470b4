"""Paper card: HFT, Half Fine-Tuning for Large Language Models (seed 53).

Component: :mod:`priorlab.continual.half_tuning` (``half_fine_tune``, ``draw_half``,
``apply_half``, ``HalfLayout`` with presets for AttentionViT and transformers Llama models).
"""

from __future__ import annotations

from priorlab.continual.half_tuning import half_fine_tune
from priorlab.registry import MethodCard, Paper, register

PAPER = Paper(
    title="HFT: Half Fine-Tuning for Large Language Models",
    authors="Tingfeng Hui, Zhenyu Zhang, Shuohuan Wang, Weiran Xu, Yu Sun, Hua Wu",
    venue="arXiv preprint",
    year=2024,
    arxiv="2404.18466",
    code_url="",
    licence="no official code located from here",
    seed_id=53,
)

USAGE = """\
import torch
import torch.nn.functional as F
from priorlab.continual.half_tuning import half_fine_tune
from priorlab.nn.attention_vit import AttentionViT

torch.manual_seed(0)
model = AttentionViT(4, image_size=8, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32)
draws = torch.Generator().manual_seed(0)  # the halves: a fresh one per stage
for stage_classes in ([0, 1], [2, 3]):
    # freeze a random half of every block's attention and MLP matrices for this stage
    selection = half_fine_tune(model, "attention_vit", generator=draws)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.rand(32, 1, 8, 8), torch.tensor(stage_classes).repeat(16)
    for step in range(10):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
print(len(selection.trained), "matrices trained,", len(selection.frozen), "frozen in the last stage")
# A transformers Llama model (SmolLM2, priorlab.llm.tiny_llama): half_fine_tune(model, "llama");
# any other block structure: HalfLayout(blocks="path.to.blocks", categories=((...), (...))).
# In an HF Trainer: call it before building the trainer of each stage.
"""

CARD = register(MethodCard(
    id="hft",
    name="HFT (half fine-tuning)",
    family="A: adaptation and continual learning",
    kind="function",
    paper=PAPER,
    summary=("Before each fine-tuning stage, freeze a random half of every transformer block's "
             "parameter matrices (half of the attention projections and half of the MLP "
             "matrices, drawn afresh per stage) and train the rest, so that the frozen half "
             "keeps what the earlier stages learned (fine-tuning under the random mask "
             "constraint M ⊙ (θ - θ_prev) = 0, which the paper interprets as a regulariser). It "
             "reports less forgetting "
             "than full fine-tuning across SFT, DPO and continual learning on LLaMA 2, at the "
             "same or better new-task scores and about 30% less training time."),
    usage=USAGE,
    hyperparameters=(
        "The fraction is one half (the method's name and default). The draw: per block, 2 of "
        "the 4 attention matrices "
        "(Q, K, V, O) and half of the MLP matrices; a new draw at every stage. layout: "
        "'attention_vit' or 'llama' presets, or a HalfLayout for another architecture. "
        "stratified=False: the control that freezes as many matrices drawn from all blocks "
        "pooled. Learning rate and epochs: tune them as for full fine-tuning (the reproduction "
        "gives HFT and FFT the same grid)."),
    deviations=(
        "No official code was located from here; the selection follows our reading of the "
        "abstract and method description. (1) With an odd number of MLP matrices (Llama's "
        "gate/up/down) each block trains 1 or 2 of them with equal odds, half on average. "
        "(2) A matrix is a linear module: its bias freezes with its weight. (3) Parameters "
        "outside the halved categories (embeddings, norms, the head) keep their requires_grad; "
        "in the reproduction they train in every arm (the class-incremental head must learn "
        "the new classes). (4) The reproduction is a class-incremental ViT image stream, a "
        "stand-in for the paper's LLM stages, with forgetting read on each task's own classes "
        "(task-incremental view; the class-incremental view is recorded too); the paper's 30% "
        "time saving is not measured."),
    claim_scope=(
        "The paper's claims are for LLaMA 2 (7B/13B) fine-tuned on TULU V2 (SFT), UltraFeedback "
        "(DPO) and the TRACE continual-learning benchmark, forgetting measured on general and "
        "knowledge benchmarks. Here: a 3-block AttentionViT pretrained on four Fashion-MNIST "
        "classes learns the six others as three stages with a shared head; forgetting (on each "
        "task's own classes) and new-task accuracy vs full fine-tuning with equal lr grids, "
        "plus a pooled-random-half control. The component itself runs on transformers Llama "
        "models (tested on tiny_llama)."),
    component=half_fine_tune,
    reproduction="p053_hft",
    tags=("continual-learning", "fine-tuning", "llm", "vit"),
))
