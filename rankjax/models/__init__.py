"""Ranking models, one family per module, chosen by name in `config.model.name`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from rankjax.models import bi_encoder, cross_encoder, listwise, mlp

MODELS = {
    "mlp": mlp.Model,
    "listwise": listwise.Model,
    "cross_encoder": cross_encoder.Model,
    "bi_encoder": bi_encoder.Model,
}


OPTIONAL_SEAMS = ("embedding_bits",)


def get(config: Mapping[str, Any], **extra) -> nn.Module:
    """Builds `MODELS[config["name"]]` with the remaining config keys as attributes.

    Args:
      config: `{"name": ..., **attributes}` (e.g. `config.model`).
      **extra: attributes not stored in configs, such as `dot_general_cls`.

    Returns:
      The flax module.
    """
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}; valid: {list(MODELS)}")
    cls = MODELS[name]
    valid = set(cls.__dataclass_fields__) - {"parent", "name"}
    # Seam settings for parts a model may not have (embedding tables) apply where it does.
    extra = {k: v for k, v in extra.items() if k in valid or k not in OPTIONAL_SEAMS}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(f"unknown model.{unknown[0]} for model {name!r}; valid: {sorted(valid)}")
    return cls(**kwargs, **extra)


def input_keys(model: nn.Module) -> tuple[str, ...]:
    """The batch keys a model reads: `("features",)`, or token arrays for text rankers."""
    return getattr(model, "inputs", ("features",))


def packed(model: nn.Module, batch: Mapping[str, Any]) -> bool:
    """Whether `batch` holds packed pairs (`data.packing`) that `model` reads."""
    return "packed_tokens" in batch and hasattr(model, "packed_inputs")


def inputs(model: nn.Module, batch: Mapping[str, Any]) -> Any:
    """The model's first argument from a batch: the array of its one input key, or a dict
    of several (text rankers; the packed arrays when the batch was packed).

    Raises:
      KeyError: naming the missing key and the batch's keys (e.g. a text model on data
        without `data.text`).
    """
    keys = model.packed_inputs if packed(model, batch) else input_keys(model)
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(
            f"model {type(model).__module__} reads batch keys {list(keys)}; the batch lacks "
            f"{missing} (it has {sorted(batch)}). Text rankers need data.text."
        )
    if len(keys) == 1:
        return batch[keys[0]]
    return {k: batch[k] for k in keys}


def sample_inputs(model: nn.Module, batch: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
    """`(x, where)` of one list of `batch` (all of a packed batch, whose rows hold several
    lists), on the host: shapes for `init` and conversion."""
    x = inputs(model, batch)
    if packed(model, batch):
        return jax.tree_util.tree_map(np.asarray, x), np.asarray(batch["where"])
    first = jax.tree_util.tree_map(lambda a: np.asarray(a[:1]), x)
    return first, np.asarray(batch["where"][:1])


def overlay(params: Mapping[str, Any], loaded: Mapping[str, Any], path: str = "") -> dict:
    """`params` with the subtrees in `loaded` (e.g. pretrained encoders) put in place.

    Raises:
      ValueError: a loaded tensor whose path the model lacks or whose shape differs,
        naming the path and both shapes.
    """
    out = dict(params)
    for key, value in loaded.items():
        where = f"{path}/{key}" if path else key
        if key not in params:
            raise ValueError(f"loaded weight {where} has no place in the model")
        if isinstance(value, Mapping):
            out[key] = overlay(params[key], value, where)
            continue
        if np.shape(value) != np.shape(params[key]):
            raise ValueError(
                f"loaded weight {where} has shape {np.shape(value)}, the model's "
                f"{np.shape(params[key])}"
            )
        out[key] = jax.numpy.asarray(value, params[key].dtype)
    return out
