#!/usr/bin/env bash
# Reproduce the write-up's comparison table: every version x the folds its preset asks for, then predict
# on the held-out test split (TTA for v2.1 and v3), then results/comparison.md.
#
#   ./run_all.sh [--data DIR] [--device cpu|cuda] [--out runs] [--results results] [--quick]
#                [-- extra train.py flags]
# Writes RESULTS/comparison.md (--quick: runs-quick/ and RESULTS/comparison-quick.md).
#
# Safe to rerun: finished folds are skipped, interrupted ones resume from their last epoch.
# --quick: a smoke run of the whole pipeline in minutes on a CPU (tiny models, random init, few steps).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

# A flag that takes a value must have one: without this check `set -u` would stop with "$2: unbound variable".
need_value() {
  if [ "$2" -lt 2 ] || [[ "$3" == --* ]]; then
    echo "error: run_all.sh $1 needs a value (e.g. $1 $4); see --help" >&2
    exit 2
  fi
}

DATA=() DEVICE=auto OUT= RESULTS=results QUICK=0 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) need_value "$1" $# "${2:-}" DIR; DATA=(--data "$2"); shift 2 ;;
    --device) need_value "$1" $# "${2:-}" cuda; DEVICE=$2; shift 2 ;;
    --out) need_value "$1" $# "${2:-}" runs; OUT=$2; shift 2 ;;
    --results) need_value "$1" $# "${2:-}" results; RESULTS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done

# A quick smoke run keeps to its own folder and table, so it never meets a real run's split or results.
if [ "$QUICK" = 1 ]; then OUT=${OUT:-runs-quick}; TABLE=comparison-quick.md; else OUT=${OUT:-runs}; TABLE=comparison.md; fi

VERSIONS=(v1 v2 v2.1 v3 v4 v5 v6)
# --quick keeps each preset's recipe (sampler, loss, schedule, SWA, folds, TTA) but swaps in a tiny model
# of the same family, random init, 32x32 input and 5 short epochs (256 draws each).
declare -A QUICK_MODEL=([v1]=tiny_efficientnet [v2]=tiny_convnext [v2.1]=tiny_convnext [v3]=tiny_efficientnet_v2
                   [v4]=tiny_efficientnet [v5]=tiny_efficientnet [v6]=tiny_efficientnet)
declare -A QUICK_FLAGS=([v1]="" [v2]="--swa-start 3 --swa-freq 1 --warmup-epochs 1"
                        [v2.1]="--swa-start 3 --swa-freq 1 --warmup-epochs 1" [v3]="" [v4]="" [v5]="" [v6]="")

for v in "${VERSIONS[@]}"; do
  flags=(--version "$v" --fold all --out "$OUT" --device "$DEVICE" "${DATA[@]}")
  if [ "$QUICK" = 1 ]; then
    # shellcheck disable=SC2206
    flags+=(--model "${QUICK_MODEL[$v]}" --pretrained none --img-size 32 --epochs 5 --batch-size 32
            --epoch-samples 256 ${QUICK_FLAGS[$v]})
  fi
  echo "== train $v"
  "$PY" train.py "${flags[@]}" "${EXTRA[@]}"
  echo "== predict $v"
  # TTA as the version's preset says (predict.py's default: the run's own setting; on for v2.1 and v3)
  "$PY" predict.py --run "$OUT/$v" --device "$DEVICE"
done
"$PY" -m imgcls.compare --runs "$OUT" --out "$RESULTS/$TABLE"
