#!/usr/bin/env bash
# Training and inference images/s of cleanse builds and of PyTorch on the CPU, side by side in one
# sitting: each round runs every program at width 16 and at width 64 (batch 128, THREADS threads),
# one after another, so that a slower stretch of a shared machine falls on all of them alike.
#
#   bash bench/cpu_side_by_side.sh PYTHON ROUNDS THREADS CLEANSE_BINARY...
#   bash bench/cpu_side_by_side.sh ~/venv/bin/python 2 2 target/release/cleanse
#
# PYTHON is an interpreter with torch installed. Prints one line per run: program, width,
# training and inference images/s.
set -euo pipefail
python=$1 rounds=$2 threads=$3
shift 3
here=$(dirname "$0")
steps() { if [ "$1" = 16 ]; then echo "--steps 8 --warmup 2"; else echo "--steps 3 --warmup 1"; fi; }
show() { # program, width, output with a JSON object at its end
    python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):]); \
print(sys.argv[1], "width", sys.argv[2], "train %.1f" % j["train_images_per_sec"], \
"infer %.1f" % j["inference_images_per_sec"])' "$1" "$2"
}
for round in $(seq "$rounds"); do
    for width in 16 64; do
        for bin in "$@"; do
            "$bin" bench --width "$width" --batch-size 128 $(steps "$width") --device cpu \
                --threads "$threads" 2>/dev/null | show "round $round $bin" "$width"
        done
        "$python" "$here/pytorch_resnet18.py" --width "$width" --batch-size 128 $(steps "$width") \
            --threads "$threads" | show "round $round pytorch" "$width"
    done
done
