r"""The compressed student that shrinks: `configs/homedepot_distill.py`'s 3-layer student with
half its attention heads and feed-forward units pruned (distillation recovers the loss) and
int8 quantization-aware training; at conversion the pruned heads and units are cut out
(`rankjax/compression/compaction.py`), so the served model is a smaller dense model with
integer weights — fewer FLOPs on every backend, where 2:4 masks
(`homedepot_student_int8_nm24.py`) only save bytes.

Command (GPU: about 2 min after the teacher's run):

  python -m experiments.train \
      --config=configs/homedepot_student_int8_pruned.py:teacher=/tmp/rankjax/hd_cross \
      --workdir=/tmp/rankjax/hd_student_int8_pruned

Arguments: those of `homedepot_distill.py`, plus `prune=P` (the share of each layer's
heads and of its feed-forward units removed, default 0.5) and `quant=int8|fp8|none`: int8
QAT (default), served in the device's fastest form (`quant.serving="auto"`: int8 on CPU,
the faster of fp8 and bf16 on Hopper GPUs, timed at conversion), fp8 e4m3 with static
scales after float training, or float (the compacted model in the training dtype). Heads
and units are scored by magnitude and pruned gradually over the first third of training;
the scoring head stays float, the embedding tables are served row-wise int4 when
quantized. `backend=aqt|qwix` picks the quantization library (Qwix's fp8 takes per-row
dynamic activation ranges). docs/results.md has measured figures.
"""

import ml_collections

from rankjax import config_args, models
from rankjax.compression import quantization, sparsity


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    mine, base_arg = config_args.split_arg(arg, {"prune", "quant", "backend"})
    own = config_args.parse_arg(mine, prune=0.5, quant="int8", backend="aqt")
    c = config_args.base_config(__file__, "homedepot_distill", base_arg)
    if c.model.name != "cross_encoder":
        raise ValueError("the pruned student is a cross-encoder (student=layers3|narrow)")
    heads = models.get(c.model).bert_config.num_attention_heads
    steps = int(c.train.num_steps)
    c.sparsity = sparsity.config_section(
        f"heads:{heads}+ffn",
        target=float(own.prune),
        exclude="score",
        start_step=0,
        end_step=max(1, steps // 3),
        update_every=max(1, steps // 12),
    )
    forms = {
        "int8": dict(weight_bits=8, activation_bits=8, backend=own.backend),
        "fp8": quantization.ptq_choice("fp8", own.backend),
    }
    if own.quant in forms:
        c.quant = quantization.config_section(**forms[own.quant], exclude="score", embedding_bits=4)
    elif own.quant != "none":
        raise ValueError(f"config argument quant={own.quant!r}; valid: int8, fp8, none")
    return c
