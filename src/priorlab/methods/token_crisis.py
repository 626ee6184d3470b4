"""Paper card: To Repeat or Not To Repeat (seed 33), a finding about data repetition.

The paper proposes no algorithm; what a practitioner reuses is the experiment's knob, a data
scheduler that fixes the token budget while varying repetition
(:func:`priorlab.lm.corpus.repeated_token_budget`), measured with
:func:`priorlab.lm.train.mean_token_loss`.
"""

from __future__ import annotations

from priorlab.lm.corpus import repeated_token_budget
from priorlab.registry import MethodCard, Paper, register

USAGE = """\
import inspect
import torch
from priorlab.lm import (TinyCausalLM, encode, held_out_windows, mean_token_loss, next_token_loss,
                         repeated_token_budget)

text = inspect.getsource(torch.nn.modules.module)  # any text; here a large source file
stream, held_out = encode(text[:60_000]), encode(text[60_000:80_000])
eval_set = held_out_windows(held_out, seq_len=32, max_tokens=2_048)
for repetitions in (1, 16):
    # same budget of 8,192 training tokens: 8,192 unique ones once, or 512 unique ones 16 times
    schedule = repeated_token_budget(stream, total_tokens=8_192, repetitions=repetitions,
                                     seq_len=32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = TinyCausalLM(98, seq_len=32, d_model=32, n_layers=1, n_heads=2, dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    for inputs, targets in schedule.batches(batch_size=8):
        loss = next_token_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(repetitions, schedule.unique_tokens, mean_token_loss(model, eval_set))
# In your own trainer: build the schedule once and feed schedule.batches(B) as the data loader.
"""

CARD = register(MethodCard(
    id="token-crisis-repetition",
    name="To Repeat or Not To Repeat (multi-epoch degradation)",
    family="T: training dynamics",
    kind="function",
    paper=Paper(
        title="To Repeat or Not To Repeat: Insights from Scaling LLM under Token-Crisis",
        authors="Fuzhao Xue et al.",
        venue="NeurIPS",
        year=2023,
        arxiv="2305.13230",
        code_url="",
        licence="no official code",
        seed_id=33,
    ),
    summary=("A finding, not an algorithm: at a fixed budget of training tokens, training for "
             "R epochs on budget/R unique tokens overfits, and held-out loss worsens as R grows "
             "('multi-epoch degradation'); of the usual regularisers only dropout relieves it. "
             "The component is the experiment's data scheduler: repeated_token_budget(stream, "
             "total_tokens, repetitions, seq_len=...) returns the windows of a budget/R-token "
             "slice and a visiting order of R shuffled epochs."),
    usage=USAGE,
    hyperparameters=(
        "No official code. The paper's knobs: total training tokens fixed (2^35 in its T5 runs) "
        "and the unique data shrunk by powers of two, so repetitions R = budget / unique tokens; "
        "dropout 0.1 is the regulariser it finds effective (it must be retuned when the model "
        "grows). Here: repetitions >= 1 (1 = online, no repetition), seq_len = the model's "
        "context; the unique slice's offset is drawn from the generator unless start= is given, "
        "so runs that share a generator seed get nested slices. total_tokens must be a multiple "
        "of repetitions * seq_len so every arm trains on exactly the same number of tokens."),
    deviations=(
        "The paper trains T5 encoder-decoder and decoder-only LMs (0.1-2.8B parameters) on C4 "
        "subsets with T5's span-corruption and causal objectives; we train a 109k-parameter "
        "causal character-level transformer (NanoDO-style block) with AdamW on Python standard-"
        "library sources, because nothing larger fits in minutes on a CPU. Unique data is a "
        "contiguous slice of the corpus, not a random subset of documents. Weight decay is "
        "tested at 0.7, chosen so its integrated effect over our 512-step run matches standard "
        "recipes (sum_t lr_t * wd about 2); the common value 0.1 would hardly act in so short a "
        "run. Only dropout and weight decay are compared (the paper also tries label smoothing, "
        "token dropping and others) and the MoE hyper-parameter transfer is not reproduced."),
    claim_scope=(
        "The claim comes from LLM pretraining at billions of tokens: degradation grows with "
        "repetition and with model size, and dropout is the regulariser that helps. Here we can "
        "test the qualitative pattern at tiny scale: held-out loss at 1x vs 4x vs 16x repetition "
        "of a 524k-character budget, and dropout vs weight decay at 16x. We cannot test the "
        "model-size trend, downstream accuracy or the MoE results."),
    component=repeated_token_budget,
    adapter=None,
    example=None,  # no adapter or optimizer: the registry's training contracts do not apply
    reproduction="p033_repeat",
    tags=("language-model", "data-repetition", "dropout", "finding"),
))
