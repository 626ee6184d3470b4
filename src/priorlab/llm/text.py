"""English text that ships with every Python: the reference-manual topics of ``pydoc_data``
(79 topics, ~465k characters, ~110k SmolLM2 tokens), split by topic so calibration (or training)
text and evaluation text never share a document.

Sorted topic ``i`` is evaluation text when ``i % 4 == 3`` (20 topics), the rest calibration.
"""

from __future__ import annotations

import torch

from priorlab.errors import did_you_mean

SPLITS = ("calibration", "evaluation")
EVALUATION_EVERY = 4


def documentation_topics(split: str) -> list[str]:
    """The topic texts of one split, in sorted topic order."""
    if split not in SPLITS:
        raise did_you_mean(split, SPLITS, "text split")
    from pydoc_data.topics import topics

    names = sorted(topics)
    held_out = {name for i, name in enumerate(names) if i % EVALUATION_EVERY == EVALUATION_EVERY - 1}
    return [topics[name] for name in names if (name in held_out) == (split == "evaluation")]


def documentation_tokens(tokenizer, split: str) -> torch.Tensor:
    """One 1-D tensor of token ids: the split's topics tokenised and joined by the end-of-text token
    (or a blank line where the tokenizer has none)."""
    eos = tokenizer.eos_token_id
    parts = []
    for text in documentation_topics(split):
        parts += tokenizer(text, add_special_tokens=False)["input_ids"]
        parts += [eos] if eos is not None else tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    return torch.tensor(parts, dtype=torch.long)
