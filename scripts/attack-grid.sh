#!/usr/bin/env bash
# Runs the attack experiments of RESULTS.md on the bundled data, two at a time (one CPU thread
# each), resuming unfinished runs and skipping finished ones. Usage:
#   bash scripts/attack-grid.sh [subset|faithful|sweep|gtsrb|all]   (default: all)
# Logs go to runs/logs/, results to runs/<group>/<name>/. Summarise with:
#   cargo run --release -- summarize runs/subset runs/faithful runs/sweep runs/gtsrb
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/cleanse
cargo build --release
CIFAR=(--dataset cifar10 --data ../shared/data/cifar10-subset --device cpu --threads 1)
GTSRB=(--dataset gtsrb --data ../shared/data/gtsrb32-subset --device cpu --threads 1)
FAITHFUL=(--width 16 --epochs 40)
mkdir -p runs/logs

jobs_list=()
add() { jobs_list+=("$*"); }

group=${1:-all}
if [[ $group == subset || $group == all ]]; then
  # The clean model with the preset's training settings; LC makes its PGD images on it.
  add subset/clean train "${CIFAR[@]}" --width 16 --epochs 24 --batch-size 32 --lr 0.05 --crop-padding 0 --no-flip
  add subset/sig attack sig --preset subset "${CIFAR[@]}"
  add subset/lc attack lc --preset subset --clean-model runs/subset/clean "${CIFAR[@]}"
  for a in wanet iab blended badnets; do
    add subset/$a attack $a --preset subset "${CIFAR[@]}"
  done
fi
if [[ $group == faithful || $group == all ]]; then
  add faithful/clean train "${CIFAR[@]}" "${FAITHFUL[@]}"
  add faithful/badnets attack badnets "${CIFAR[@]}" "${FAITHFUL[@]}"
  add faithful/lc attack lc --clean-model runs/faithful/clean "${CIFAR[@]}" "${FAITHFUL[@]}"
  for a in blended sig wanet iab; do
    add faithful/$a attack $a "${CIFAR[@]}" "${FAITHFUL[@]}"
  done
fi
if [[ $group == sweep || $group == all ]]; then
  for r in 0.01 0.05 0.1 0.2; do
    add sweep/badnets-a2o-$r attack badnets --preset subset --poison-rate $r "${CIFAR[@]}"
    add sweep/badnets-a2a-$r attack badnets --preset subset --poison-rate $r --all-to-all "${CIFAR[@]}"
  done
fi
if [[ $group == gtsrb || $group == all ]]; then
  add gtsrb/clean train "${GTSRB[@]}" --width 16 --epochs 24 --batch-size 32 --lr 0.05 --crop-padding 0 --no-flip
  add gtsrb/badnets attack badnets --preset subset "${GTSRB[@]}"
fi

run_one() {
  local name=$1; shift
  local out=runs/$name
  local log=runs/logs/${name//\//-}.log
  if [[ -f $out/report.json ]] && grep -q '"status": "complete"' "$out/report.json"; then
    echo "done already: $name"; return 0
  fi
  local resume=()
  [[ -f $out/checkpoint/state.json ]] && resume=(--resume)
  echo "start: $name"
  if "$BIN" "$@" --out "$out" "${resume[@]}" >"$log" 2>&1; then
    echo "finished: $name"
  else
    echo "FAILED: $name (see $log)"; return 1
  fi
}

status=0
for ((i = 0; i < ${#jobs_list[@]}; i += 2)); do
  read -r -a a <<<"${jobs_list[i]}"
  run_one "${a[@]}" &
  p1=$!
  p2=
  if ((i + 1 < ${#jobs_list[@]})); then
    read -r -a b <<<"${jobs_list[i + 1]}"
    run_one "${b[@]}" &
    p2=$!
  fi
  wait $p1 || status=1
  [[ -n $p2 ]] && { wait $p2 || status=1; }
done
exit $status
