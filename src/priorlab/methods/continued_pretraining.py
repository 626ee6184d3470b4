"""Paper card: continued pre-training for (generative) unsupervised domain adaptation (seed 51).

Components: :func:`priorlab.functional.domain_adaptation.mask_tokens` and
:func:`~priorlab.functional.domain_adaptation.masked_lm_loss` (the CPT objective), and the DANN
baseline's :class:`~priorlab.functional.domain_adaptation.GradientReversal`,
:func:`~priorlab.functional.domain_adaptation.dann_loss` and
:func:`~priorlab.functional.domain_adaptation.dann_lambda`.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.functional.domain_adaptation import (
    GradientReversal, dann_lambda, dann_loss, mask_tokens, masked_lm_loss)
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="How Useful is Continued Pre-Training for Generative Unsupervised Domain Adaptation?",
    authors="Rheeya Uppaal, Yixuan Li, Junjie Hu",
    venue="RepL4NLP workshop at ACL",
    year=2024,
    arxiv="2401.17514",
    code_url="https://github.com/Uppaal/cpt-generative-uda",
    licence="repository holds only a README (code announced, not released when checked)",
    seed_id=51,
)

USAGE = """\
import torch
from transformers import BertConfig, BertForMaskedLM
from priorlab.functional.domain_adaptation import mask_tokens, masked_lm_loss

torch.manual_seed(0)
config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=16)
model = BertForMaskedLM(config)  # your pretrained encoder
MASK_ID, PAD_ID = 3, 0
target_ids = torch.randint(5, 100, (64, 16))  # unlabelled *target-domain* text, tokenised
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
for step in range(3):  # 1) continued pre-training on the target text
    batch = target_ids[torch.randint(len(target_ids), (16,), generator=generator)]
    masked, labels = mask_tokens(batch, mask_token_id=MASK_ID, vocab_size=100,
                                 special_mask=batch == PAD_ID, generator=generator)
    loss = masked_lm_loss(model(input_ids=masked).logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# 2) then fine-tune model.bert + a task head on the labelled *source* data as usual.
# The DANN baseline: loss = task_loss + dann_loss(f_source, f_target, discriminator,
#                                                 dann_lambda(step / total_steps))
"""


class _TinyMaskedLM(nn.Module):
    """An embedding + linear masked LM: enough for the contract to train the CPT objective."""

    def __init__(self, vocab_size: int = 20, width: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.out = nn.Linear(width, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(ids)))


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return _TinyMaskedLM()


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 20, (8, 12), generator=generator)
    return mask_tokens(ids, mask_token_id=1, vocab_size=20, probability=0.3, generator=generator)


def _example() -> Example:
    ids = torch.tensor([[2, 5, 7, 11, 19], [3, 4, 6, 12, 18]])
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=masked_lm_loss,
        optimizer_fn=lambda params: torch.optim.AdamW(params, lr=1e-2),
        adapter_fn=None,
        zero_strength=None,  # CPT is a training phase, not a strength-controlled term
        baseline=None,
        bad_args=(
            lambda: mask_tokens(ids, mask_token_id=1, vocab_size=20, probability=0.0),
            lambda: mask_tokens(ids, mask_token_id=1, vocab_size=20, probability=1.5),
            lambda: mask_tokens(ids, mask_token_id=25, vocab_size=20),
            lambda: mask_tokens(ids, mask_token_id=1, vocab_size=10),
            lambda: mask_tokens(ids.float(), mask_token_id=1, vocab_size=20),
            lambda: mask_tokens(ids, mask_token_id=1, vocab_size=20, mask_share=0.8, random_share=0.3),
            lambda: mask_tokens(ids, mask_token_id=1, vocab_size=20, special_mask=(ids > 3)[:, :2]),
            lambda: masked_lm_loss(torch.zeros(2, 5, 20), ids[:, :4]),
            lambda: GradientReversal(scale=-1.0),
            lambda: dann_lambda(1.5),
            lambda: dann_loss(torch.zeros(2, 4), torch.zeros(2, 3), nn.Linear(4, 1), 1.0),
        ),
    )


CARD = register(MethodCard(
    id="continued-pretraining",
    name="Continued pre-training (CPT) for unsupervised domain adaptation",
    family="A: adaptation and continual learning",
    kind="function",
    paper=PAPER,
    summary=("Before fine-tuning on the labelled source domain, continue the pretrained model's "
             "masked-language-model objective on unlabelled text of the target domain; the model "
             "then classifies target text better. The paper compares it with domain-invariant "
             "training (DANN: a domain classifier behind gradient reversal), provided here too."),
    usage=USAGE,
    hyperparameters=(
        "mask_tokens: probability 0.15 of choosing a token, of which mask_share 0.8 -> [MASK], "
        "random_share 0.1 -> a random token, the rest kept (BERT's defaults); special_mask marks "
        "padding/[CLS]/[SEP] as never chosen. CPT length and learning rate: the paper's could not "
        "be retrieved; the reproduction uses the pretraining optimiser (AdamW 1e-3) for 500 "
        "steps. DANN: dann_lambda gamma = 10 (Ganin et al.), domain classifier a 2-layer MLP."),
    deviations=(
        "The paper adapts generative models (T5-style encoder-decoders and decoders, prompted / "
        "instruction-tuned, full and parameter-efficient tuning) on MNLI genres and Amazon "
        "reviews; no such model or data is offline here. The reproduction uses a tiny BERT "
        "pretrained here that classifies by predicting a topic word at a [MASK] prefixed to the "
        "text (the masked-LM analogue of generating the label), and a docstring -> comment "
        "topic-classification pair built from the Python standard library. A first version with "
        "a linear head on mean-pooled states was piloted (one seed) and showed no CPT gain; the "
        "prompt form was adopted before the claim was fixed, as closer to the paper's setting. "
        "CPT uses BERT masking (15%, 80/10/10), not T5 span "
        "corruption. DANN keeps a constant (linearly decayed) learning rate instead of Ganin's "
        "annealing schedule. No official code was released to compare against."),
    claim_scope=(
        "The paper finds that CPT on the target domain improves target accuracy and compares "
        "favourably with domain-invariance methods across architectures, tuning methods and "
        "data regimes, and that it works by learning to predict task-informative masked words. "
        "Here: one tiny encoder, one offline domain pair, three arms (source-only, DANN, CPT) with "
        "the same learning-rate grid selected on source validation; the architecture/PEFT/data "
        "sweeps and the mechanism analysis are not run."),
    component=mask_tokens,
    adapter=None,
    example=_example,
    reproduction="p051_continued_pretraining",
    tags=("domain-adaptation", "masked-lm", "continued-pretraining", "dann", "text"),
))
