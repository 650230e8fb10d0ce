"""A served ranker as one file that runs without rankjax: `jax.export`.

    rankjax.export.save(rankjax.serving.load(workdir, "served"), "/tmp/ranker.jaxexport")
    score = rankjax.export.load("/tmp/ranker.jaxexport")   # jax and numpy only
    scores = score(features, where)                      # [b, n, F], [b, n] -> [b, n]

The file holds the StableHLO of the whole scoring function — the fitted feature transform
(for feature rankers), the model, and its weights as constants (integer weights and scales
for a served quantized model) — with the batch and list sizes symbolic, so one artifact
serves any shape. Loading it needs `jax` only: no model code, no config, no checkpoint
reader (`jax.export.deserialize(...).call(...)`). Text rankers take their token arrays
(`models.input_keys`) in place of `features`. A fixed-shape CUDA export can carry
rankjax's Pallas kernels instead of XLA's formulations (`save`'s `kernels="pallas"`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.export  # a submodule to import explicitly before jax 0.8
import jax.numpy as jnp
import numpy as np

from rankjax import compiler, files, models, serving
from rankjax.data.transforms import QUANTILE_PROBS, FeatureTransform, ppf_table

# Platforms the artifact is compiled for; XLA lowers it anew for each at load time.
PLATFORMS = ("cpu", "cuda")
_MAGIC = b"rankjax-export-v1\n"


def numpy_interp(x: jax.Array, xp: jax.Array, fp: jax.Array) -> jax.Array:
    """`np.interp` in `jax.numpy`, ties included: where the last knots repeat (a value
    filling the top quantiles), NumPy returns `fp[-1]` at `x == xp[-1]` and `jnp.interp`
    an earlier knot's value, which moved tied features' normal scores by up to 0.1."""
    return jnp.where(x >= xp[-1], fp[-1], jnp.interp(x, xp, fp))


def traced_transform(transform: FeatureTransform) -> Callable[[jax.Array], jax.Array]:
    """`FeatureTransform.__call__` in `jax.numpy` (float32): `[n, F] -> [n, F_out]`.

    NaN handling follows the transform: imputed when it was fitted with imputation,
    otherwise passed through (the exported function cannot raise: `load`'s scorer refuses
    NaN on valid items before calling it, as `serving.Ranker.score` does).
    """
    knots = jnp.asarray(QUANTILE_PROBS, jnp.float32)
    probs, normal_scores = (jnp.asarray(a, jnp.float32) for a in ppf_table())

    def gauss_rank(column, q):  # gauss_rank for one feature
        up = numpy_interp(column, q, knots)
        down = -numpy_interp(-column, -q[::-1], -knots[::-1])
        return numpy_interp(0.5 * (up + down), probs, normal_scores)

    def apply(features):
        x = jnp.asarray(features, jnp.float32)
        t = transform
        if t.fill is not None:
            nan = jnp.isnan(x)
            flags = nan[:, list(t.indicators)].astype(jnp.float32)
            x = jnp.concatenate([jnp.where(nan, jnp.asarray(t.fill, jnp.float32), x), flags], 1)
        if t.log1p:
            x = jnp.sign(x) * jnp.log1p(jnp.abs(x))
        if t.quantiles is not None:
            q = jnp.asarray(t.quantiles, jnp.float32)
            x = jax.vmap(gauss_rank, in_axes=(1, 1), out_axes=1)(x, q)
        if t.mean is not None:
            x = (x - jnp.asarray(t.mean, jnp.float32)) / jnp.asarray(t.std, jnp.float32)
        return x

    return apply


def input_keys(ranker) -> tuple[str, ...]:
    """What the exported function takes besides `where`: `("features",)` or token arrays."""
    return tuple(models.input_keys(ranker.model))


def raw_width(transform: FeatureTransform) -> int:
    """Raw features per item that `transform` takes (before missing-value indicators).

    Raises:
      ValueError: a transform that fixes no width (nothing fitted); pass the width.
    """
    if transform.fill is not None:
        return int(np.shape(transform.fill)[0])
    for fitted in (transform.quantiles, transform.mean):
        if fitted is not None:
            return int(np.shape(fitted)[-1]) - len(transform.indicators)
    raise ValueError("the feature transform fixes no width; pass num_features")


def _signature(
    ranker,
    num_features: int | None,
    token_length: int | None,
    fixed_shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Input names, dtypes and shapes (`b`, `n`: symbolic batch and list sizes, unless
    `fixed_shape` fixes them)."""
    keys = models.input_keys(ranker.model)
    b, n = ("b", "n") if fixed_shape is None else tuple(int(d) for d in fixed_shape)
    if keys == ("features",):
        if num_features is None:
            raise ValueError("a feature ranker's export needs num_features (raw features)")
        inputs = {"features": [[b, n, num_features], "float32"]}
        # NaN features: imputed by the transform, or refused by the loaded scorer.
        missing = "impute" if ranker.transform.fill is not None else "error"
        return {
            "inputs": inputs,
            "where": [[b, n], "bool"],
            "output": [[b, n], "float32"],
            "missing": missing,
        }
    else:  # token arrays [b, n, T]; T symbolic unless fixed
        length = "t" if token_length is None else token_length
        inputs = {k: [[b, n, length], "int32"] for k in keys}
    return {"inputs": inputs, "where": [[b, n], "bool"], "output": [[b, n], "float32"]}


def exportable(model: Any, kernels: str = "xla") -> Any:
    """`model` with its `"auto"` kernels (text rankers) fixed to `kernels` for the export.

    With `"xla"` (the default) the fused Pallas kernels (attention, LayerNorm) stay out: a
    default export's batch and list sizes are symbolic, a Triton kernel's grid must be
    static (lowering for a GPU fails with "dynamic grid bounds not supported"), and
    lowered off a GPU they would export as Pallas's interpreter loops. `"pallas"` (see
    `save`'s `kernels`) puts them in.

    Raises:
      ValueError: the model asks for a Pallas kernel by name in an `"xla"` export.
    """
    fixed = {}
    for field in ("attention", "norm"):
        choice = getattr(model, field, None)
        if choice == "pallas" and kernels != "pallas":
            raise ValueError(
                f"model.{field}='pallas' cannot be exported with symbolic sizes: a Triton "
                f"kernel needs a static grid; export with model.{field}='auto' or 'xla' "
                "(XLA's formulation; the weights are the same), or with kernels='pallas' "
                "and a fixed_shape"
            )
        if choice == "auto":
            fixed[field] = kernels
    return model.clone(**fixed) if fixed else model


# The custom call that carries a Pallas kernel's Triton IR. jax.export guarantees no
# compatibility for it across jaxlib versions, so a "pallas" export records the version
# and `load` refuses another.
_TRITON_CALL = "__gpu$xla.gpu.triton"


def _check_pallas_export(platforms, fixed_shape, token_length) -> None:
    """Raises ValueError unless a `kernels="pallas"` export can hold the kernels."""
    problems = []
    if tuple(platforms) != ("cuda",):
        problems.append(f"platforms=('cuda',) (got {tuple(platforms)})")
    if fixed_shape is None or token_length is None:
        problems.append("fixed_shape=(batch, list size) and token_length (static grids)")
    if jax.default_backend() != "gpu":
        problems.append(f"a GPU to lower the kernels on (JAX's backend is {jax.default_backend()})")
    if problems:
        raise ValueError("kernels='pallas' needs " + "; ".join(problems))


def save(
    ranker,
    path: str,
    *,
    num_features: int | None = None,
    token_length: int | None = None,
    platforms: tuple[str, ...] = PLATFORMS,
    param_dtype: str | None = None,
    fixed_shape: tuple[int, int] | None = None,
    kernels: str = "xla",
) -> dict[str, Any]:
    """Exports `ranker`'s scoring function (a `serving.Ranker`) to `path`.

    Args:
      ranker: from `serving.load` (float, or `"served"`: integer weights).
      path: the file to write.
      num_features: raw features per item (feature rankers; the transform maps them).
      token_length: fixes the token axis of text rankers (None: symbolic).
      platforms: where it may run. A text ranker's `"auto"` kernels export as XLA's
        formulations unless `kernels="pallas"` (see `exportable`).
      param_dtype: e.g. `"bfloat16"`: store the float32 parameters in that dtype, for a
        model that computes in it (half their bytes, and no casts in every call; a float32
        model would only cast them back); None keeps them as trained.
      fixed_shape: `(batch, list size)` fixed in the program (None: both symbolic), e.g.
        a serving endpoint that pads every request to 64 candidates.
      kernels: `"xla"`, or `"pallas"`: a text ranker's `"auto"` kernels export as rankjax's
        fused Pallas kernels (Triton), as it scores in process on a GPU. Needs
        `platforms=("cuda",)`, `fixed_shape`, `token_length`, and a GPU to export on; the
        file then loads only under the same jax version (Triton IR has no compatibility
        guarantee).

    Returns:
      The signature written beside the program (input names, dtypes, shapes).

    Raises:
      ValueError: `kernels="pallas"` without what it needs, or an unknown `kernels`.
    """
    if kernels not in ("xla", "pallas"):
        raise ValueError(f"kernels={kernels!r}; valid: 'xla', 'pallas'")
    if kernels == "pallas":
        _check_pallas_export(platforms, fixed_shape, token_length)
    signature = _signature(ranker, num_features, token_length, fixed_shape)
    if kernels == "pallas":
        signature["kernels"] = {"name": "pallas", "jax": jax.__version__}
    keys = tuple(signature["inputs"])
    transform = traced_transform(ranker.transform) if keys == ("features",) else None
    variables, model = ranker.variables, exportable(ranker.model, kernels)
    if param_dtype is not None:
        variables = serving.cast_params(variables, param_dtype)

    def score(inputs: dict[str, jax.Array], where: jax.Array) -> jax.Array:
        if transform is not None:
            x = inputs["features"]
            b, n, f = x.shape
            x = transform(x.reshape(b * n, f)).reshape(b, n, -1)
        else:
            x = inputs if len(keys) > 1 else inputs[keys[0]]
        return model.apply(variables, x, where, train=False).astype(jnp.float32)

    scope = jax.export.SymbolicScope()

    def spec(shape, dtype):
        dims = ", ".join(str(d) for d in shape)
        return jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims, scope=scope), dtype)

    args = (
        {k: spec(*v) for k, v in signature["inputs"].items()},
        spec(*signature["where"]),
    )
    checks = (
        [jax.export.DisabledSafetyCheck.custom_call(_TRITON_CALL)] if kernels == "pallas" else []
    )
    exported = jax.export.export(jax.jit(score), platforms=platforms, disabled_checks=checks)(*args)
    program = bytes(exported.serialize())
    # The checksum covers the signature (as written without it) and the program: `load`
    # refuses a file changed after it was written.
    signature["sha256"] = _digest(signature, program)
    header = json.dumps(signature).encode() + b"\n"
    files.write_atomic(path, _MAGIC + header + program)
    return signature


def _check_shape(path: str, key: str, shape: tuple, expected: list) -> None:
    """Raises ValueError when `shape` breaks the signature's fixed sizes (strings are
    symbolic and take any size)."""
    fits = len(shape) == len(expected) and all(
        isinstance(e, str) or e == d for d, e in zip(shape, expected, strict=True)
    )
    if not fits:
        raise ValueError(
            f"{path}: input {key!r} has shape {tuple(shape)}; the export takes {expected}"
        )


def _digest(signature: dict, program: bytes) -> str:
    unsigned = {k: v for k, v in signature.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(unsigned).encode() + b"\n" + program).hexdigest()


def load(path: str) -> Callable[..., np.ndarray]:
    """The exported scoring function: `(features [b, n, F] (or the token arrays by name),
    where [b, n] = all True) -> [b, n]` numpy scores. Needs jax only.

    Raises:
      ValueError: `path` is not a rankjax export, or was changed after it was written
        (its checksum differs; files written before checksums existed are not checked).
    """
    with open(path, "rb") as f:
        blob = f.read()
    if not blob.startswith(_MAGIC):
        raise ValueError(f"{path}: not a rankjax export (no {_MAGIC.strip().decode()!r} header)")
    header, _, program = blob[len(_MAGIC) :].partition(b"\n")
    try:
        signature = json.loads(header)
    except ValueError:
        raise ValueError(f"{path}: corrupted (its header is not valid JSON)") from None
    expected = signature.get("sha256")
    if expected is not None and _digest(signature, program) != expected:
        raise ValueError(f"{path}: corrupted (checksum mismatch: the file changed after export)")
    made_by = signature.get("kernels", {}).get("jax")
    if made_by and made_by != jax.__version__:
        raise ValueError(
            f"{path}: exported with Pallas kernels under jax {made_by}, whose Triton IR "
            f"need not load under jax {jax.__version__}; export it again with this version"
        )
    exported = jax.export.deserialize(bytearray(program))
    keys = tuple(signature["inputs"])

    def score(*arrays: np.ndarray, where: np.ndarray | None = None, **named) -> np.ndarray:
        inputs = dict(zip(keys, arrays, strict=False)) | named
        missing = [k for k in keys if k not in inputs]
        if missing:
            raise ValueError(f"{path}: missing inputs {missing}; it takes {list(keys)}")
        inputs = {k: np.asarray(inputs[k], signature["inputs"][k][1]) for k in keys}
        for k in keys:
            _check_shape(path, k, inputs[k].shape, signature["inputs"][k][0])
        b, n = inputs[keys[0]].shape[:2]
        mask = np.ones((b, n), bool) if where is None else np.asarray(where, bool)
        if "features" in inputs:  # as `serving.Ranker.score` treats them
            inputs["features"] = serving.checked_features(
                inputs["features"], mask, signature.get("missing") == "impute"
            )
        return np.asarray(call(inputs, mask))

    # Compiled with rankjax's inference options (`compiler`). On a GPU a bare
    # `exported.call` takes XLA's defaults: its Triton GEMMs leave the bias and GELU
    # epilogues as separate passes, and on the H200 an exported fp8 program compiled so
    # ran none of its products as cuBLASLt fp8 GEMMs.
    call = compiler.jit(exported.call)
    score.signature = signature
    score.exported = exported
    score.call = call  # `(inputs: dict, where)` on device arrays, for timing
    return score
