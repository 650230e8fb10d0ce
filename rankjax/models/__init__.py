"""Ranking models, one family per module, chosen by name in `config.model.name`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from rankjax.models import listwise, mlp

MODELS = {"mlp": mlp.Model, "listwise": listwise.Model}


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
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(f"unknown model.{unknown[0]} for model {name!r}; valid: {sorted(valid)}")
    return cls(**kwargs, **extra)
