#!/usr/bin/env bash
# Wall time of the README's runs with each cleanse build, one after another in one sitting with
# nothing else running: the 30-epoch width-16 clean training on the bundled CIFAR-10 subset
# (BENCHMARKS.md's first section) and, with `--quick`, the quick protocol (the README's first
# command). Each run writes into a fresh folder under OUT.
#
#   bash bench/wall_times.sh OUT [--quick] CLEANSE_BINARY...
#
# Prints one line per run: the build, the run, wall seconds, and the run's final clean accuracy.
set -euo pipefail
out=$1
shift
quick=0
if [ "${1:-}" = "--quick" ]; then
    quick=1
    shift
fi
[ "$#" -ge 1 ] || { echo "usage: bench/wall_times.sh OUT [--quick] CLEANSE_BINARY..." >&2; exit 2; }
mkdir -p "$out"
data=../shared/data/cifar10-subset
final_acc() { python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["final"]["clean_acc"])' "$1"; }
for bin in "$@"; do
    name=$(basename "$bin")
    dir=$out/$name-train
    [ ! -e "$dir" ] || { echo "$dir exists; pick a new OUT" >&2; exit 1; }
    t0=$(date +%s.%N)
    "$bin" train --dataset cifar10 --data "$data" --width 16 --epochs 30 --device cpu \
        --out "$dir" > "$out/$name-train.log" 2>&1
    t1=$(date +%s.%N)
    echo "$name train-w16-30ep $(python3 -c "print('%.1f' % ($t1 - $t0))") s clean_acc $(final_acc "$dir/report.json")"
    if [ "$quick" = 1 ]; then
        dir=$out/$name-quick
        t0=$(date +%s.%N)
        "$bin" protocol run protocols/quick.toml --out "$dir" > "$out/$name-quick.log" 2>&1
        t1=$(date +%s.%N)
        echo "$name quick-protocol $(python3 -c "print('%.1f' % ($t1 - $t0))") s"
    fi
done
