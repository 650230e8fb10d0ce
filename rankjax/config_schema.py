"""Checks an experiment config before anything runs: unknown or missing keys are errors
that name the key and list the valid ones (a typo must never be silently ignored)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rankjax.baselines import BASELINES
from rankjax.compression import distillation, quantization, sparsity
from rankjax.data.pipeline import TEXT_KEYS
from rankjax.data.sources import LIST_SOURCES
from rankjax.data.synthetic import WorldConfig
from rankjax.evaluators import section

# section -> (required keys, optional keys)
_SECTIONS: dict[str, tuple[set[str], set[str]]] = {
    "loss": ({"name"}, {"lambdaweight", "temperature", "max_label"}),
    "optim": (
        {"name", "learning_rate"},
        {"schedule", "warmup_steps", "weight_decay", "grad_clip_norm", "momentum", "b1", "b2"},
    ),
    "train": ({"num_steps", "batch_size", "log_every", "eval_every"}, set()),
    "ckpt": ({"every", "keep"}, {"best_metric", "best_mode", "use_best"}),
    "mesh": ({"num_devices"}, {"model", "rules"}),
}
_DATA_COMMON = (
    {"source", "list_size"},
    {"split_seed", "transforms", "missing", "label_range", "shards", "text", "bucket_batches"},
)
# Query-grouped splits of a table that comes whole: fractions, or k folds.
_SPLIT_KEYS = {"split", "num_folds", "fold", "valid_fraction"}
_DATA_BY_SOURCE = {
    "synthetic": (set(), {"world"} | _SPLIT_KEYS),
    "libsvm": ({"train_file", "test_file"}, {"valid_file", "valid_fraction", "num_features"}),
    "judgments": (
        {"file", "query_column", "label_column"},
        {
            "item_column",
            "feature_columns",
            "text_columns",
            "encoding",
            "label_offset",
            "max_queries",
        }
        | _SPLIT_KEYS,
    ),
}
_TOP = {"seed", "data", "model", "evals", *_SECTIONS}
_OPTIONAL_TOP = {"task", "quant", "sparsity", "distill"}  # checked by their modules' from_config


def _check_keys(where: str, given: Mapping, required: set[str], optional: set[str]) -> None:
    valid = sorted(required | optional)
    for key in given:
        if key not in required | optional:
            raise ValueError(f"unknown config key {where}.{key}; valid keys of {where}: {valid}")
    missing = sorted(required - set(given))
    if missing:
        raise ValueError(f"config {where} is missing {missing}; valid keys of {where}: {valid}")


def validate(config: Mapping[str, Any]) -> None:
    """Raises ValueError naming the first unknown, missing or inconsistent config key.

    The model section is checked by `rankjax.models.get` against the model's attributes.
    """
    section.validate(config, ("ranking",), "ranking")
    _check_keys("config", config, _TOP, _OPTIONAL_TOP)
    for name, (required, optional) in _SECTIONS.items():
        _check_keys(name, config[name], required, optional)
    data = config["data"]
    source = data.get("source")
    if source not in _DATA_BY_SOURCE:
        raise ValueError(f"data.source={source!r}; valid: {list(LIST_SOURCES)}")
    required, optional = _DATA_BY_SOURCE[source]
    _check_keys("data", data, _DATA_COMMON[0] | required, _DATA_COMMON[1] | optional)
    world_fields = {f.name for f in dataclasses.fields(WorldConfig)}
    _check_keys("data.world", data.get("world", {}), set(), world_fields)

    evals = config["evals"]
    if source in ("synthetic", "judgments") and not (data.get("split") or data.get("num_folds")):
        raise ValueError(f"data.source={source!r} needs data.split fractions or data.num_folds")
    if data.get("text"):
        _check_keys("data.text", data["text"], {"item_columns"}, TEXT_KEYS - {"item_columns"})
    for key, entry in evals.items():
        for name in entry.get("baselines", ()):
            if name not in BASELINES:
                raise ValueError(f"evals.{key}.baselines names {name!r}; valid: {list(BASELINES)}")
        calibrate = tuple(entry.get("calibrate_rmse", ()))
        if calibrate and (len(calibrate) != 2 or calibrate[0] >= calibrate[1]):
            raise ValueError(
                f"evals.{key}.calibrate_rmse={calibrate}; expected (low, high) label range"
            )
    distillation.from_config(config.get("distill"))
    quantization.from_config(config.get("quant"))
    sparsity.from_config(config.get("sparsity"))
    main = section.selecting(evals)
    best = config["ckpt"].get("best_metric")
    if best and best not in evals[main]["metrics"]:
        raise ValueError(
            f"ckpt.best_metric={best!r} is not in evals.{main}.metrics "
            f"{list(evals[main]['metrics'])}"
        )
