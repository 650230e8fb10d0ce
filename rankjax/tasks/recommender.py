"""What the recommendation models' tasks share: the model's versions (`Form`), the
quantization seam, side features and epoch batches.

Each model (`two_tower.py`, `dcn.py`, `sequential.py`) turns a config and an interaction
log into `ModelParts`; `retrieval.py` puts them into the loop's `Run`, evaluates and
serves them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.compression import forms, quantization
from rankjax.types import ScoreFn


def _features(log, names, prefix: str, table: dict) -> tuple[dict, dict]:
    """`({name: array over all ids}, {name: vocabulary size})` of the chosen side features."""
    out, vocab = {}, {}
    for name in names:
        if name not in table:
            raise ValueError(f"data.{prefix}_features names {name!r}; the data has {sorted(table)}")
        out[name] = np.asarray(table[name])
        if f"{prefix}:{name}" in log.vocabularies:
            vocab[name] = len(log.vocabularies[f"{prefix}:{name}"])
        elif out[name].dtype.kind in "iu":  # codes without a stored vocabulary (synthetic)
            vocab[name] = int(out[name].max(initial=0)) + 1
    return out, vocab


@dataclasses.dataclass(frozen=True)
class Form:
    """Which version of a model a task builds.

    Attributes:
      phase: the quantization seam's phase — `"train"` (float, or fake-quantized under
        QAT), `"convert"` (freezes integer weights) or `"serve"` (reads them).
      embedding_bits: 0 (float tables) or 8/4 (served row-wise quantized tables).
      served: the served form of the phases after training (`compression.forms`); "":
        the first this device offers.
    """

    phase: str = "train"
    embedding_bits: int = 0
    served: str = ""


TRAINING = Form()


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """What differs between recommendation models; the loop, evaluation and serving are
    shared.

    Attributes:
      build: `Form -> flax module` (cached).
      sample: arguments of the module's `__call__` that reach every layer (init and
        conversion).
      loss: `(params, batch, rng) -> scalar` (rng: dropout and sampled negatives).
      batch: `step -> {name: np.ndarray}`, a pure function of (seed, step): the global
        batch.
      scorer: `(variables, form, split) -> ScoreFn` (`score_fn`) for split "valid" (the
        user as of training) or "test" (also after validation); `variables` is
        `{"params": ...}` plus the frozen integer weights when served.
      calibration: `step -> __call__ arguments` from that training batch: inputs for
        static activation ranges (fp8 serving).
      loaded: pretrained weights (host arrays) laid over the fresh parameters when
        training starts, e.g. a BERT item tower's checkpoint; or None.
    """

    build: Callable[[Form], Any]
    sample: tuple
    loss: Callable[[Any, dict, jax.Array], jax.Array]
    batch: Callable[[int], dict]
    scorer: Callable[[Any, Form, str], ScoreFn]
    calibration: Callable[[int], tuple]
    loaded: Any = None

    def init(self, rng: jax.Array) -> Any:
        """Fresh float parameters (before `loaded` is laid over them)."""
        return self.build(TRAINING).init(rng, *self.sample)["params"]


def score_fn(
    catalog: Callable[[jax.Array], jax.Array],
    pairs: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> ScoreFn:
    """The `ScoreFn` of a recommender: `{"users": [n]}` -> `catalog(users)` `[n,
    num_items]`; `{"users": [n], "items": [n, K]}` -> `pairs(users, items)` `[n, K]`, at
    the cost of K items (a cascade's second stage, sampled negatives, impressions), or the
    catalog's scores at those items for a model without `pairs`."""

    def score(batch):
        users = jnp.asarray(batch["users"])
        if "items" not in batch:
            return catalog(users)
        items = jnp.asarray(batch["items"])
        if pairs is None:
            return jnp.take_along_axis(catalog(users), items, axis=1)
        return pairs(users, items)

    return score


def seam(quantizer: quantization.Quantizer | None, form: Form) -> dict[str, Any]:
    """Model keyword arguments for `form`: the Dense seam and the tables' bits. Phases
    after training build the form's served version (`Form.served`)."""
    if quantizer is not None and form.phase != "train":
        quantizer = forms.quantizer_for(quantizer, form.served or forms.candidates(quantizer)[0])
    factory = quantizer.dot_general_factory(form.phase) if quantizer else None
    return {"dot_general_cls": factory, "embedding_bits": form.embedding_bits}


def side_features(dcfg, log) -> tuple[dict, dict, dict, dict]:
    """`(user features, their vocabularies, item features, theirs)` named by
    `data.user_features` / `data.item_features`."""
    users = _features(log, dcfg.get("user_features", ()), "user", log.user_features)
    items = _features(log, dcfg.get("item_features", ()), "item", log.item_features)
    return *users, *items


def epoch_rows(seed: int, size: int, batch_size: int) -> Callable[[int], np.ndarray]:
    """`step -> rows` of a fresh permutation of `range(size)` per epoch (drop remainder)."""
    if size < batch_size:
        raise ValueError(f"train has {size} examples, fewer than train.batch_size={batch_size}")
    per_epoch = size // batch_size

    @functools.lru_cache(maxsize=1)
    def permutation(epoch):
        return np.random.default_rng([seed, epoch]).permutation(size)

    def rows(step):
        epoch, index = divmod(step, per_epoch)
        return permutation(epoch)[index * batch_size : (index + 1) * batch_size]

    return rows
