"""Optimizers and learning-rate schedules from `config.optim`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

OPTIMIZERS = ("adam", "adamw", "sgd", "lamb", "adafactor")
SCHEDULES = ("constant", "cosine", "linear")


def schedule(cfg: Mapping[str, Any], num_steps: int) -> optax.Schedule:
    """Linear warm-up over `warmup_steps`, then `schedule` decay to 0 at `num_steps`."""
    name = cfg.get("schedule", "constant")
    lr = float(cfg["learning_rate"])
    warmup = int(cfg.get("warmup_steps", 0))
    if name not in SCHEDULES:
        raise ValueError(f"optim.schedule={name!r}; valid: {list(SCHEDULES)}")
    decay_steps = max(num_steps - warmup, 1)
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps)
    else:
        main = optax.linear_schedule(lr, 0.0, decay_steps)
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make(
    cfg: Mapping[str, Any], num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer.

    Args:
      cfg: `config.optim` with `name`, `learning_rate`, and optionally `schedule`,
        `warmup_steps`, `weight_decay`, `grad_clip_norm` (0 = off), `momentum` (sgd),
        `b1`, `b2`.
      num_steps: total training steps (for decaying schedules).

    Returns:
      `(tx, lr_schedule)`; the schedule is returned for logging.
    """
    name = cfg["name"]
    lr = schedule(cfg, num_steps)
    wd = float(cfg.get("weight_decay", 0.0))
    b1, b2 = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999))
    if name == "adam":
        tx = optax.adam(lr, b1=b1, b2=b2)
    elif name == "adamw":
        tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=wd)
    elif name == "sgd":
        tx = optax.sgd(lr, momentum=float(cfg.get("momentum", 0.0)) or None)
    elif name == "lamb":
        tx = optax.lamb(lr, b1=b1, b2=b2, weight_decay=wd)
    elif name == "adafactor":
        tx = optax.adafactor(lr)
    else:
        raise ValueError(f"optim.name={name!r}; valid: {list(OPTIMIZERS)}")
    clip = float(cfg.get("grad_clip_norm", 0.0))
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, lr
