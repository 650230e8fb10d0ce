"""Checks an experiment config before anything runs: unknown or missing keys are errors
that name the key and list the valid ones (a typo must never be silently ignored), and
values outside their range or choices are errors naming the key, the value and what it
takes (`check_values`, for every task)."""

from __future__ import annotations

import codecs
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from rankjax import losses, metrics, models, optim
from rankjax.baselines import BASELINES
from rankjax.compression import distillation, quantization, sparsity
from rankjax.data import feed, interactions, libsvm, tokens
from rankjax.data.pipeline import TEXT_KEYS
from rankjax.data.sources import LIST_SOURCES
from rankjax.data.synthetic import WorldConfig
from rankjax.evaluators import section
from rankjax.models import bert, dcn, layers, sequential

# section -> (required keys, optional keys)
_SECTIONS: dict[str, tuple[set[str], set[str]]] = {
    "loss": ({"name"}, {"lambdaweight", "temperature", "max_label"}),
    "optim": (
        {"name", "learning_rate"},
        {"schedule", "warmup_steps", "weight_decay", "grad_clip_norm", "momentum", "b1", "b2"},
    ),
    "train": ({"num_steps", "batch_size", "log_every", "eval_every"}, set(feed.TRAIN_KEYS)),
    "ckpt": ({"every", "keep"}, {"best_metric", "best_mode", "use_best"}),
    "mesh": ({"num_devices"}, {"model", "rules", "fsdp"}),
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
# Checked by their modules' from_config; `provenance` is what config.json records of the
# versions and commit that wrote it (`rankjax.provenance`), never read as a setting.
_OPTIONAL_TOP = {"task", "quant", "sparsity", "distill", "provenance"}


# key path ("*" matches any key at that level) -> (type, low, high, note); None: unbounded.
# Integers must be ints (bools are not); floats may be ints.
_RANGES: dict[str, tuple[type, float | None, float | None, str]] = {
    "seed": (int, 0, None, ""),
    "train.num_steps": (int, 1, None, ""),
    "train.batch_size": (int, 1, None, ""),
    "train.log_every": (int, 1, None, ""),
    "train.eval_every": (int, 1, None, ""),
    "train.input_threads": (int, 0, None, "0: batches built in the training loop"),
    "train.prefetch": (int, 1, None, "calls' batches built ahead"),
    "train.steps_per_call": (int, 1, None, "training steps run by one compiled call"),
    "ckpt.every": (int, 1, None, ""),
    "ckpt.keep": (int, 1, None, "checkpoints kept; at least the latest"),
    "optim.learning_rate": (float, 0, None, ""),
    "optim.warmup_steps": (int, 0, None, ""),
    "optim.weight_decay": (float, 0, None, ""),
    "optim.grad_clip_norm": (float, 0, None, "0: no clipping"),
    "optim.momentum": (float, 0, 1, ""),
    "optim.b1": (float, 0, 1, ""),
    "optim.b2": (float, 0, 1, ""),
    "data.list_size": (int, 1, None, ""),
    "data.bucket_batches": (int, 0, None, ""),
    "data.shards": (int, 0, None, "0: one per process"),
    "data.max_queries": (int, 0, None, "0: all"),
    "data.max_users": (int, 0, None, "0: all"),
    "data.num_folds": (int, 2, None, ""),
    "data.valid_fraction": (float, 0, 1, ""),
    "data.split_seed": (int, 0, None, ""),
    "data.fold": (int, 0, None, ""),
    "data.num_features": (int, 0, None, "0: the widest training line's"),
    "data.label_offset": (float, None, None, "added to every label"),
    "data.text.max_length": (int, 0, None, "0: the checkpoint's"),
    "data.text.pad_multiple": (int, 1, None, ""),
    "data.text.pack_length": (int, 0, None, "0: padded lists"),
    "evals.*.batch_size": (int, 1, None, ""),
    "evals.*.users_per_chunk": (int, 1, None, ""),
    "evals.*.num_negatives": (int, 1, None, "sampled items per held-out one"),
    "evals.*.negatives_per_positive": (int, 1, None, ""),
    "evals.*.seed": (int, 0, None, ""),
    "evals.*.min_list_size": (int, 1, None, ""),
    "loss.temperature": (float, 0, None, ""),
    "loss.max_label": (float, 0, None, "the label that maps to 1"),
    "loss.num_negatives": (int, 1, None, ""),
    "loss.hard_negatives": (int, 0, None, ""),
    "loss.retriever_top": (int, 1, None, "the retriever's ranks read"),
    "loss.retriever_skip": (int, 0, None, "first ranks left out"),
    "model.text_max_len": (int, 1, None, ""),
    "mesh.model": (int, 1, None, ""),
    # Compression sections: also checked by their modules, which name the value's meaning.
    "quant.calibration_batches": (int, 1, None, ""),
    "sparsity.start_step": (int, 0, None, ""),
    "sparsity.end_step": (int, 0, None, ""),
    "sparsity.update_every": (int, 1, None, ""),
    "sparsity.target": (float, 0, 1, "the fraction of weights pruned"),
    "distill.temperature": (float, 0, None, ""),
    "distill.weight": (float, 0, None, "of the teacher's term"),
    "distill.catalog_pairs": (int, 0, None, "unlabelled products per training query"),
    "data.world.seed": (int, 0, None, ""),
    "data.world.num_products": (int, 1, None, ""),
    "data.world.num_brands": (int, 1, None, ""),
    "data.world.num_colors": (int, 1, None, ""),
    "data.world.num_queries": (int, 1, None, ""),
    "data.world.num_users": (int, 1, None, ""),
    "data.world.events_per_user": (int, 1, None, ""),
    "data.world.title_word_dropout": (float, 0, 1, ""),
    "data.world.classifier_noise": (float, 0, None, ""),
    "data.world.label_noise": (float, 0, None, ""),
    # Model attributes: a name means the same in every model family that has it.
    "model.d_model": (int, 1, None, ""),
    "model.dim": (int, 1, None, ""),
    "model.embed_dim": (int, 1, None, ""),
    "model.mlp_dim": (int, 1, None, ""),
    "model.head_hidden": (int, 1, None, ""),
    "model.max_len": (int, 1, None, ""),
    "model.num_heads": (int, 1, None, ""),
    "model.num_layers": (int, 0, None, "0: none, or a text ranker's checkpoint's"),
    "model.num_cross": (int, 0, None, ""),
    "model.low_rank": (int, 0, None, "0: full rank"),
    "model.hash_buckets": (int, 0, None, "0: one row per id"),
    "model.text_layers": (int, 0, None, ""),
    "model.item_text_layers": (int, 0, None, ""),
    "model.hidden_size": (int, 0, None, "0: the checkpoint's"),
    "model.num_attention_heads": (int, 0, None, "0: the checkpoint's"),
    "model.intermediate_size": (int, 0, None, "0: the checkpoint's"),
    "model.dropout": (float, 0, 1, ""),
    "model.dropout_rate": (float, 0, 1, ""),
    "model.input_noise": (float, 0, None, "the noise's standard deviation"),
    "model.temperature": (float, 0, None, ""),
}
# Keys holding a sequence of numbers, each checked against the range.
_LIST_RANGES: dict[str, tuple[type, float | None, float | None, str]] = {
    "model.hidden_sizes": (int, 1, None, "layer widths"),
    "model.deep": (int, 1, None, "layer widths"),
    "model.hidden": (int, 1, None, "layer widths"),
    "model.init_layers": (int, 0, None, "the checkpoint's layer indices"),
}
# key -> its valid values (strings are compared exactly).
_CHOICES: dict[str, tuple[Any, ...]] = {
    "quant.embedding_bits": (0, 4, 8),
    "optim.name": optim.OPTIMIZERS,
    "optim.schedule": optim.SCHEDULES,
    "ckpt.best_mode": ("max", "min"),
    "loss.lambdaweight": tuple(losses.LAMBDAWEIGHTS),
    "evals.*.gain": tuple(metrics.GAINS),
    "evals.*.no_relevant": metrics.NO_RELEVANT,
    "data.missing": libsvm.MISSING_POLICIES,
    "data.layout": interactions.LAYOUTS,
    "data.text.encoding": tokens.ENCODINGS,
    "model.dtype": tuple(layers.DTYPES),
    "model.pooling": bert.POOLINGS,
    "model.positions": sequential.POSITIONS,
    "model.structure": dcn.STRUCTURES,
}
# Keys that must be True or False (a string such as "false" is truthy in Python).
_BOOLS = (
    "mesh.fsdp",
    "ckpt.use_best",
    "model.pretrained",
    "model.layer_norm",
    "model.normalize",
    "model.shared",
    "quant.enabled",
    "quant.fp8",
    "sparsity.enabled",
    "loss.log_q",
    "distill.init_from_teacher",
)
_EXCLUSIVE_LOW = {
    "optim.learning_rate",
    "loss.temperature",
    "loss.max_label",
    "model.temperature",
    "distill.temperature",
}
_EXCLUSIVE_HIGH = {
    "optim.momentum",
    "optim.b1",
    "optim.b2",
    "data.valid_fraction",
    "data.world.title_word_dropout",
    "sparsity.target",
    "model.dropout",
    "model.dropout_rate",
}


def _values(config: Any, path: list[str], prefix: str = ""):
    """`(dotted key, value)` for every key of `config` matching `path` ("*": any key)."""
    if not path:
        yield prefix, config
        return
    if not hasattr(config, "keys"):
        return
    head, rest = path[0], path[1:]
    for key in list(config.keys()) if head == "*" else [head]:
        if key in config and config[key] is not None:
            yield from _values(config[key], rest, f"{prefix}.{key}" if prefix else key)


def check_values(config: Mapping[str, Any]) -> None:
    """Raises ValueError naming the first config value outside what its key takes: a
    number outside its range (`_RANGES`, `_LIST_RANGES`; non-finite floats never), a value
    not among its choices (`_CHOICES`), a flag that is not a bool (`_BOOLS`), or an unknown
    text encoding, e.g. `train.batch_size=0: expected an integer >= 1`."""
    for pattern, (kind, low, high, note) in _RANGES.items():
        for key, value in _values(config, pattern.split(".")):
            _check_value(key, pattern, value, kind, low, high, note)
    for pattern, (kind, low, high, note) in _LIST_RANGES.items():
        for key, value in _values(config, pattern.split(".")):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"{key}={value!r}: expected a sequence of numbers ({note})")
            for i, item in enumerate(value):
                _check_value(f"{key}[{i}]", pattern, item, kind, low, high, note)
    for pattern, choices in _CHOICES.items():
        for key, value in _values(config, pattern.split(".")):
            if isinstance(value, bool) or not _hashable(value) or value not in choices:
                raise ValueError(f"{key}={value!r}: expected one of {list(choices)}")
    for key, value in _values(config, ["data", "encoding"]):  # the file's text encoding
        try:
            codecs.lookup(value)
        except (LookupError, TypeError):
            raise ValueError(f"{key}={value!r}: expected a text encoding, e.g. 'utf-8'") from None
    for pattern in _BOOLS:
        for key, value in _values(config, pattern.split(".")):
            if not isinstance(value, bool):
                raise ValueError(f"{key}={value!r}: expected True or False")
    mesh = config.get("mesh") or {}
    devices = mesh.get("num_devices", 0)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < -1:
        raise ValueError(
            f"mesh.num_devices={devices!r}: expected -1 (every device), 0 (one) or a count"
        )
    data = config.get("data") or {}
    folds, fold = data.get("num_folds"), data.get("fold")
    if folds and fold is not None and not (isinstance(fold, int) and 0 <= fold < folds):
        raise ValueError(f"data.fold={fold!r}: expected an integer in [0, {folds})")


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _check_value(key, pattern, value, kind, low, high, note) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok_type = is_int if kind is int else (is_int or isinstance(value, float))
    name = "an integer" if kind is int else "a number"
    lo = "" if low is None else (">" if pattern in _EXCLUSIVE_LOW else ">=") + f" {low}"
    hi = "" if high is None else ("<" if pattern in _EXCLUSIVE_HIGH else "<=") + f" {high}"
    want = f"{name} {' and '.join(filter(None, (lo, hi)))}".strip()
    want += f" ({note})" if note else ""
    if not ok_type or (not is_int and not math.isfinite(value)):  # NaN and infinities too
        if kind is float:
            want = want.replace("a number", "a finite number", 1)
        raise ValueError(f"{key}={value!r}: expected {want}")
    too_low = low is not None and (value <= low if pattern in _EXCLUSIVE_LOW else value < low)
    too_high = high is not None and (value >= high if pattern in _EXCLUSIVE_HIGH else value > high)
    if too_low or too_high:
        raise ValueError(f"{key}={value!r}: expected {want}")


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
    check_values(config)
    if config["loss"].get("name") not in losses.LOSSES:
        raise ValueError(f"loss.name={config['loss'].get('name')!r}; valid: {list(losses.LOSSES)}")
    if config["model"].get("name") not in models.MODELS:
        raise ValueError(
            f"model.name={config['model'].get('name')!r}; valid: {list(models.MODELS)}"
        )
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
