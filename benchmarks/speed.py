"""Speed of rankjax's rankers as a user would run them, for side-by-side comparisons.

`benchmarks/run_speed.py` drives these on a GPU next to PyTorch peers (`benchmarks/peers/`); the
functions take sizes as arguments, so the tests run them on CPU at toy sizes.

* `scoring_variants`: the MiniLM-shaped cross-encoder in bf16 (XLA, cuDNN or Pallas
  attention; the default LayerNorm) and served compressed (fp8 with static scales, AQT
  int8, AQT int8 weight-only), each a `Scorer` ready to score; `measure_scoring` gives
  docs/s and one-query latency with the weights compiled in (`Scorer.served`), and
  `measure_exported` the same through the serving artifact (`rankjax.export`);
  `latency_breakdown` splits one call's latency into launch, device time and wait.
* `training_step`: the trainer's own compiled step (`trainer.compile_step`) with its state
  and batch placed for data parallelism.
* `train_step_rate`: fine-tuning steps of the cross-encoder (float or QAT), data-parallel
  over the first `num_devices` devices.
* `listwise_train_rate`: training steps of the listwise transformer ranker at allRank's
  Web30K shape.
* `two_tower_train_rate`: training steps of the two-tower retrieval model with large id
  tables, data-parallel with the tables replicated or with their rows split over a
  `model` mesh axis (as `mesh.model` does in the retrieval task).

Timing rules are `benchmarks/timing.py`'s: compilation and two warm-up calls excluded,
device work finished before each clock read, medians over repeats.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import timing
from rankjax import compiler, export, losses, models, serving, sharding, trainer
from rankjax.compression import quantization, serve
from rankjax.models import bert, listwise, two_tower
from rankjax.tasks import retrieval as tasks_retrieval

# Served compression variants: post-training quantization of the float model (as the
# Home Depot config's `serve=` argument does; the scoring layer stays float).
SERVED = {
    f"{label} served": quantization.Quantizer(
        **quantization.PTQ_CHOICES[key], exclude="^score$", calibration_batches=2
    )
    for key, label in [
        ("fp8", "fp8 (static scales)"),
        ("int8", "int8 (AQT w8a8)"),
        ("w8", "int8 weight-only (AQT)"),
    ]
}
# The same post-training quantization through Qwix (per-row dynamic activation ranges).
SERVED.update(
    {
        f"{label} served": quantization.Quantizer(
            backend="qwix", mode="ptq", exclude="^score$", **settings
        )
        for settings, label in [
            (dict(fp8=True, serving="fp8"), "fp8 (Qwix, dynamic scales)"),
            (dict(serving="int8"), "int8 (Qwix w8a8)"),
        ]
    }
)


def cross_encoder_model(shape: dict[str, int] | None = None, **attributes) -> Any:
    """A cross-encoder module of the MiniLM-L6 shape (or `shape`'s overrides:
    `hidden_size`, `num_attention_heads`, `intermediate_size`, `num_layers`), to be
    initialised with random weights (no checkpoint is read)."""
    return models.get({"name": "cross_encoder", "pretrained": False, **(shape or {})}, **attributes)


def pair_tokens(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (query, product) token ids `[batch, 1, length]`, every token real, the second
    half in segment 1: the shape an offline or serving scorer sees."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, size=(batch, 1, length), dtype=np.int32)
    types = np.broadcast_to(np.arange(length) >= length // 2, ids.shape).astype(np.int32)
    return {"tokens": ids, "token_types": types}


@jax.jit
def _where(tokens: dict[str, jax.Array]) -> jax.Array:
    return jnp.ones(tokens["tokens"].shape[:2], bool)


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A model ready to score pairs: `score(variables, tokens) -> [batch, 1]` (jitted)."""

    name: str
    model: Any
    variables: Any

    @functools.cached_property
    def score(self) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
        model = self.model
        return compiler.jit(lambda v, t: model.apply(v, t, _where(t), train=False))

    @functools.cached_property
    def served(self) -> Callable[[dict[str, jax.Array]], jax.Array]:
        """`score` with the variables compiled into the program, as the exported serving
        artifact (`rankjax.export`) holds them and a PyTorch module holds its weights: a
        call passes only the tokens. Passing MiniLM-L6's 103 weight arrays costs JAX's
        dispatch about 0.25 ms per call on the H200 host, more than half the GPU time of
        a 64-pair call (docs/performance.md)."""
        model, variables = self.model, jax.device_put(self.variables)
        return compiler.jit(lambda t: model.apply(variables, t, _where(t), train=False))


def scoring_variants(
    shape: dict[str, int] | None = None,
    attentions: tuple[str, ...] = ("xla", "cudnn", "pallas"),
    served: tuple[str, ...] = tuple(SERVED),
    calibration_tokens: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> list[Scorer]:
    """The cross-encoder in bf16 with each of `attentions`, then served as each of `served`
    (converted from the same float parameters; compressed variants use the default
    attention, `"auto"`: the Pallas kernel on a GPU, XLA's elsewhere).

    Args:
      shape: BERT shape overrides (None: MiniLM-L6).
      attentions: bf16 attention implementations to include (`bert.ATTENTIONS`).
      served: keys of `SERVED`.
      calibration_tokens: batch for static activation ranges (default: 256 random pairs).
      seed: parameter initialisation seed.

    Returns:
      One `Scorer` per variant, bf16 first.
    """
    base = cross_encoder_model(shape, dtype="bfloat16")
    sample = pair_tokens(2, 16)
    params = jax.jit(base.init)(jax.random.PRNGKey(seed), sample, _where(sample))["params"]
    out = [
        Scorer(
            f"rankjax bf16, {a} attention",
            cross_encoder_model(shape, dtype="bfloat16", attention=a),
            serving.cast_params({"params": params}),
        )
        for a in attentions
    ]
    calib = calibration_tokens if calibration_tokens is not None else pair_tokens(256, 64, seed + 1)
    for name in served:
        q = SERVED[name]

        def build(phase, q=q):
            make = functools.partial(cross_encoder_model, shape, dtype="bfloat16")
            return quantization.build(make, q, phase)

        variables = serve.convert(
            build,
            params,
            (sample, _where(sample)),
            quantizer=q,
            calibration_batches=[(calib, _where(calib))] * q.calibration_batches,
        )
        variables = serving.cast_params(variables)
        out.append(Scorer(f"rankjax {name}", build("serve"), variables))
    return out


def measure_scoring(
    scorer: Scorer, batch: int, length: int, latency_batch: int, repeats: int = 20
) -> dict[str, float]:
    """Docs/s scoring `[batch, length]` pairs per call, and p50/p99 ms of one call of
    `latency_batch` pairs (a query's candidates); each call waited for, weights compiled
    in (`Scorer.served`)."""
    served = scorer.served
    return _measure(served, served, batch, length, latency_batch, repeats)


def exported_scorer(scorer: Scorer, batch: int, length: int, folder: str) -> Callable:
    """`scorer` exported by `rankjax.export` for `[batch, length]` pairs and loaded back:
    `tokens -> [batch, 1]` scores, called as `Scorer.served` is. On a GPU a fixed-shape
    CUDA export with the kernels the model runs in process (`kernels="pallas"`);
    elsewhere XLA's formulations."""
    on_gpu = jax.default_backend() == "gpu"
    path = os.path.join(folder, f"{batch}x{length}.jaxexport")
    export.save(
        serving.Ranker(scorer.model, scorer.variables, None, None),
        path,
        token_length=length,
        fixed_shape=(batch, 1),
        platforms=("cuda",) if on_gpu else (jax.default_backend(),),
        kernels="pallas" if on_gpu else "xla",
    )
    call, where = export.load(path).call, jax.device_put(np.ones((batch, 1), bool))
    return lambda tokens: call(tokens, where)


def measure_exported(
    scorer: Scorer, batch: int, length: int, latency_batch: int, repeats: int = 20
) -> dict[str, float]:
    """`measure_scoring` through `exported_scorer`'s files (one per shape)."""
    with tempfile.TemporaryDirectory() as folder:
        big = exported_scorer(scorer, batch, length, folder)
        small = exported_scorer(scorer, latency_batch, length, folder)
    return _measure(big, small, batch, length, latency_batch, repeats)


def _measure(big_fn, small_fn, batch, length, latency_batch, repeats) -> dict[str, float]:
    big = jax.device_put(pair_tokens(batch, length, 1))
    seconds = timing.wall_seconds(lambda: big_fn(big), repeats, warmup=2)
    small = pair_tokens(latency_batch, length, 2)
    latency = timing.latency_ms(small_fn, small, 5 * repeats)
    return {"docs_per_sec": batch / statistics.median(seconds), **latency}


EXPORTED = ", exported"  # suffix of a variant's name timed through its exported file


def bf16_baseline(rows: list[dict], variant: str) -> float:
    """The docs/s that `variant`'s "× rankjax bf16" divides by: the fastest rankjax bf16
    row timed the same way, through exported files (names ending in `EXPORTED`) or in
    process. The same program timed both ways differs only by run-to-run noise, so
    mixing the two would credit or charge a variant with that noise. An exported row
    falls back to the in-process rate when no bf16 variant was exported.

    Args:
      rows: dicts with "variant" (name) and "docs_per_sec".
      variant: the row's name.
    """
    bf16 = [r for r in rows if "bf16" in r["variant"]]
    in_process = [r["docs_per_sec"] for r in bf16 if not r["variant"].endswith(EXPORTED)]
    exported = [r["docs_per_sec"] for r in bf16 if r["variant"].endswith(EXPORTED)]
    same = exported if variant.endswith(EXPORTED) and exported else in_process
    if not same:
        raise ValueError(f"no rankjax bf16 row to compare {variant!r} with")
    return max(same)


def latency_breakdown(
    fn: Callable[[Any], jax.Array], batch: Any, calls: int = 400, block: int = 20
) -> dict[str, float]:
    """Where one waited-for call's time goes, without a profiler (which changes it).

    Three loops over `fn(batch)`, after 30 warm-up calls, each result dropped before the
    next call (so XLA's CUDA graph keeps its buffer addresses and is not re-recorded):

    * synced: the call and its wait, as `timing.latency_ms` times it;
    * back to back: `block` calls issued, then one wait; the time per call is the
      device's own when it exceeds the host's launch cost;
    * dispatch: the time until the call returns, before its wait.

    Args:
      fn: a jitted function of `batch`.
      batch: its argument, already on the device.
      calls: timed calls in the synced and dispatch loops.
      block: calls per back-to-back group (`calls // block` groups).

    Returns:
      Milliseconds: `synced_p50`, `synced_p10`, `synced_p99`, `back_to_back` (median per
      call) and `dispatch_p50`.
    """
    synced = timing.wall_seconds(lambda: fn(batch), calls, warmup=30)

    def group():
        for _ in range(block - 1):
            fn(batch)  # dropped at once, as in the other loops
        return fn(batch)

    groups = [t / block for t in timing.wall_seconds(group, max(1, calls // block), 0)]
    dispatch = []
    for _ in range(calls):
        start = time.perf_counter()
        out = fn(batch)
        dispatch.append(time.perf_counter() - start)
        jax.block_until_ready(out)
        del out
    ms = {f"synced_p{q}": float(np.percentile(synced, q)) * 1e3 for q in (50, 10, 99)}
    ms["back_to_back"] = statistics.median(groups) * 1e3
    ms["dispatch_p50"] = statistics.median(dispatch) * 1e3
    return ms


def one_kernel_program() -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """A jitted one-kernel program (`x + 1` on 64 floats) and its argument on the device:
    `latency_breakdown` of it is the runtime's own round trip, the floor under any call."""
    return jax.jit(lambda x: x + 1), jax.device_put(np.ones((64, 1), np.float32))


def agreement(reference: jax.Array, other: jax.Array) -> float:
    """Spearman rank correlation of two score vectors (ties broken by position)."""
    ranks = [np.argsort(np.argsort(np.asarray(s, np.float64).ravel())) for s in (reference, other)]
    return float(np.corrcoef(*ranks)[0, 1])


def training_step(
    model: Any,
    loss_fn: Callable,
    inputs: Any,
    labels: np.ndarray,
    where: np.ndarray,
    num_devices: int,
    lr: float,
) -> tuple[Callable, trainer.TrainState, dict[str, jax.Array]]:
    """The trainer's own compiled step (`trainer.compile_step`: forward, loss, backward,
    AdamW update, metrics; the state donated) for `model`, with its first state and batch
    placed for data parallelism over `num_devices`: the batch split, parameters replicated.

    Returns:
      `(step, state, batch)`: `step(state, batch) -> (state, metrics)`.
    """

    def loss(params, batch, rng):
        scores = model.apply(
            {"params": params}, batch["inputs"], batch["where"], train=True, rngs={"dropout": rng}
        )
        return loss_fn(scores, batch["labels"], where=batch["where"])

    mesh = sharding.make_mesh(num_devices)
    batch = {"inputs": inputs, "labels": labels, "where": where}
    step, state = _compiled(
        lambda rng: model.init(rng, inputs, where)["params"], loss, optax.adamw(lr), mesh
    )
    return step, state, jax.device_put(batch, sharding.batch_sharding(mesh))


def _compiled(init_params: Callable, loss: Callable, tx, mesh, rules=()) -> tuple[Callable, Any]:
    """`(step, state)`: the trainer's step for `loss` and its first state, laid out on
    `mesh` by `rules` as the trainer lays out a run's state."""
    key = jax.random.PRNGKey(0)
    state, shardings = trainer.init_state(init_params, tx, mesh, rules, key, key)
    return trainer.compile_step(loss, tx, shardings, mesh), state


def _train_rate(model, loss_fn, inputs, labels, where, num_devices, repeats, lr, block):
    """Examples/s of `training_step`, timed by `_steps_rate`."""
    step, state, batch = training_step(model, loss_fn, inputs, labels, where, num_devices, lr)
    return _steps_rate(lambda state: step(state, batch)[0], state, labels.shape[0], repeats, block)


def _steps_rate(advance: Callable, state: Any, examples: int, repeats: int, block: int) -> float:
    """Examples/s of training steps `state = advance(state)` on `examples` each.

    As in a training loop, steps are dispatched back to back and the device is waited for
    once per `block` steps (the median block time over `repeats`, divided by `block`), so
    the host's dispatch of one step overlaps the device's work on the previous one.
    """

    def run():
        nonlocal state
        for _ in range(block):
            state = advance(state)
        return state

    seconds = statistics.median(timing.wall_seconds(run, repeats, warmup=2)) / block
    return examples / seconds


def train_step_rate(
    batch: int,
    length: int,
    quantizer: quantization.Quantizer | None = None,
    num_devices: int = 1,
    shape: dict[str, int] | None = None,
    repeats: int = 10,
    block: int = 10,
) -> float:
    """Pairs/s of fine-tuning the bf16 cross-encoder (MSE on graded labels, AdamW), in float
    or with `quantizer`'s training seam (QAT), over `num_devices` devices."""
    make = functools.partial(cross_encoder_model, shape, dtype="bfloat16")
    model = quantization.build(make, quantizer, "train")
    tokens = pair_tokens(batch, length, 3)
    labels = np.random.default_rng(4).uniform(0, 2, size=(batch, 1)).astype(np.float32)
    where = np.ones((batch, 1), bool)
    mse = losses.get("mse")
    return _train_rate(model, mse, tokens, labels, where, num_devices, repeats, 5e-5, block)


def listwise_train_rate(
    batch: int = 64,
    list_size: int = 240,
    features: int = 136,
    dtype: str = "bfloat16",
    num_devices: int = 1,
    repeats: int = 10,
    block: int = 10,
    **model_overrides,
) -> float:
    """Lists/s of training the listwise transformer ranker (softmax loss, AdamW) at the
    shape of allRank's Web30K example (144 wide, 2 blocks, 4 heads, 384-wide feed-forward,
    dropout 0.1), on random features with a quarter of the slots padding."""
    attrs = dict(d_model=144, num_layers=2, num_heads=4, mlp_dim=384, head_hidden=144)
    model = listwise.Model(**{**attrs, "dropout_rate": 0.1, "dtype": dtype, **model_overrides})
    rng = np.random.default_rng(5)
    x = rng.normal(size=(batch, list_size, features)).astype(np.float32)
    where = rng.uniform(size=(batch, list_size)) >= 0.25
    where[:, 0] = True
    labels = np.where(where, rng.integers(0, 5, size=where.shape), 0).astype(np.float32)
    softmax = losses.get("softmax")
    return _train_rate(model, softmax, x, labels, where, num_devices, repeats, 1e-3, block)


def two_tower_train_rate(
    rows: int,
    dim: int,
    batch: int,
    num_devices: int = 1,
    model_axis: int = 1,
    repeats: int = 5,
    block: int = 10,
) -> float:
    """Examples/s of training the two-tower model (id tables of `rows` users and `rows`
    items, `dim` wide; in-batch softmax, AdamW) on `num_devices` devices: with
    `model_axis` 1 the tables are replicated and their gradients summed across devices
    (plain data parallelism); with `model_axis` > 1 every table's rows are split over
    that many devices (`tasks_retrieval.TABLE_RULES`), the batch over the rest.

    Each row is a user and an item drawn as in a shop's log: users uniformly, items from a
    Zipf law (popular items recur, and the loss removes accidental hits).
    """
    mesh = sharding.make_mesh(num_devices, model=model_axis)
    sharding.check_divisible(batch, mesh)
    model = two_tower.Model(rows, rows, {}, {}, dim=dim, row_multiple=model_axis)
    rng = np.random.default_rng(6)
    users = rng.integers(0, rows, size=batch).astype(np.int32)
    items = ((rng.zipf(1.2, size=batch) - 1) % rows).astype(np.int32)

    def loss(params, batch, rng):
        del rng  # no dropout
        logits = model.apply({"params": params}, batch["users"], {}, batch["items"], {})
        return losses.in_batch_softmax_loss(logits, batch["items"])

    rules = tasks_retrieval.TABLE_RULES if model_axis > 1 else ()
    step, state = _compiled(
        lambda key: model.init(key, users[:2], {}, items[:2], {})["params"],
        loss,
        optax.adamw(1e-3),
        mesh,
        rules,
    )
    inputs = jax.device_put({"users": users, "items": items}, sharding.batch_sharding(mesh))
    return _steps_rate(lambda state: step(state, inputs)[0], state, batch, repeats, block)


def flops_per_doc(shape: dict[str, int] | None, length: int) -> float:
    """Forward FLOPs of the cross-encoder on one `length`-token pair."""
    config = cross_encoder_model(shape).bert_config
    layers = (shape or {}).get("num_layers") or config.num_hidden_layers
    return bert.flops_per_sequence(config, layers, length)
