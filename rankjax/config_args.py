"""Config arguments in big_vision's form: `configs/x.py:key=value,flag`.

`get_config(arg)` calls `parse_arg(arg, key=default, ...)`; the defaults fix each key's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import ml_collections


def _convert(key: str, value: str, default):
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", ""):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"config argument {key}={value!r}: expected a boolean")
    if isinstance(default, int | float):
        try:
            return type(default)(value)
        except ValueError:
            raise ValueError(
                f"config argument {key}={value!r}: expected {type(default).__name__}"
            ) from None
    return value


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `"key=value,flag"` against `defaults`.

    Args:
      arg: the text after `:` in `--config=path.py:arg` (None or empty for none).
      **defaults: every accepted key with its default value (which fixes its type).

    Returns:
      A ConfigDict with every default, overridden by `arg`. A bare `flag` sets a boolean key.

    Raises:
      ValueError: an unknown key (listing the valid ones) or a value of the wrong type.
    """
    out = dict(defaults)
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; valid: {sorted(defaults)}")
        if not sep and not isinstance(defaults[key], bool):
            raise ValueError(f"config argument {key!r} needs a value: {key}=...")
        out[key] = _convert(key, value.strip(), defaults[key])
    return ml_collections.ConfigDict(out)


def split_arg(arg: str | None, keys: set[str] | frozenset[str]) -> tuple[str, str]:
    """Splits `"a=1,b=2,flag"` into the parts whose key is in `keys` and the rest, for a
    derived config that adds arguments and passes the others to its base config."""
    mine, rest = [], []
    for part in (arg or "").split(","):
        if part.strip():
            (mine if part.partition("=")[0].strip() in keys else rest).append(part.strip())
    return ",".join(mine), ",".join(rest)


def base_config(config_file: str, name: str, arg: str | None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config `name` beside `config_file`, for derived configs.

    Loaded by path, so a derived config works from any working directory.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py")
    spec = importlib.util.spec_from_file_location(f"rankjax_base_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def train_section(**keys: Any) -> dict[str, Any]:
    """A config's `train` section: `keys` (num_steps, batch_size, log_every, eval_every)
    and the input pipeline's settings (`rankjax.data.feed`), declared so that
    `--config.train.input_threads=N` or `--config.train.steps_per_call=N` can override
    them."""
    from rankjax.data import feed

    return {
        "input_threads": feed.DEFAULT_THREADS,
        "prefetch": feed.DEFAULT_PREFETCH,
        "steps_per_call": feed.DEFAULT_STEPS_PER_CALL,
        **keys,
    }


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config (dicts or ConfigDicts) as `{"optim.learning_rate": 1e-3, ...}`;
    an empty section has no keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) or hasattr(value, "items"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_dir() -> str:
    """The folder of the named configs: the installed `rankjax.configs`, or in a checkout
    that is not installed, `configs/` beside the package."""
    try:
        spec = importlib.util.find_spec("rankjax.configs")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_names() -> list[str]:
    """The configs shipped with the package, by name."""
    folder = config_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def resolve(spec: str) -> str:
    """`--config`'s value with a config name replaced by its file's path.

    Args:
      spec: `"name[:arg]"` or `"path/to/config.py[:arg]"`.

    Returns:
      `"path[:arg]"`: a path as given, or the shipped config `name`'s file.

    Raises:
      ValueError: a name that is neither a file nor a shipped config (the message lists them).
    """
    target, sep, arg = spec.partition(":")
    if os.path.exists(target) or os.sep in target or target.endswith(".py"):
        return spec
    path = os.path.join(config_dir(), target + ".py")
    if not os.path.isfile(path):
        close = difflib.get_close_matches(target, config_names(), n=3)
        hint = f"; closest: {close}" if close else ""
        raise ValueError(
            f"config {spec!r}: no config file or shipped config named {target!r}{hint}; "
            f"shipped: {config_names()}"
        )
    return path + sep + arg


def load(spec: str) -> ml_collections.ConfigDict:
    """The config `"name:arg"` (shipped with the package) or `"path/to/config.py:arg"`
    (as `--config=` takes them), from Python or a notebook:
    `load("synthetic_listwise:runlocal")`."""
    path, _, arg = resolve(spec).partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such config file")
    name = os.path.splitext(os.path.basename(path))[0]
    return base_config(path, name, arg or None)


def hard_negatives(arg: ml_collections.ConfigDict, top: int = 100) -> dict[str, Any]:
    """The retrieval `loss` keys of the config arguments `retriever=PATH,hard=K,skip=S`:
    K hard negatives per example from ranks S..`top` of a finished run; {} without `hard`."""
    if not arg.hard:
        return {}
    return dict(
        hard_negatives=arg.hard,
        retriever=arg.retriever,
        retriever_top=top,
        retriever_skip=arg.skip,
    )


def optional_section(cls: type, cfg: Mapping[str, Any] | None, section: str) -> Any | None:
    """Builds dataclass `cls` from an optional config section with an `enabled` switch.

    Returns:
      None when the section is absent or `enabled` is false; else `cls(**rest)`.

    Raises:
      ValueError: a key that is not a field of `cls`, naming it and listing the valid ones.
    """
    if not cfg or not cfg.get("enabled", False):
        return None
    kwargs = {k: v for k, v in dict(cfg).items() if k != "enabled"}
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(
            f"unknown config key {section}.{unknown[0]}; valid: {sorted(valid | {'enabled'})}"
        )
    return cls(**kwargs)
