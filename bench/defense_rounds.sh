#!/usr/bin/env bash
# What a round of ANP (100 mask updates) and of I-BAU costs next to fine-tuning's forward+backward
# passes, on one teacher, one thread:
#
#   bash bench/defense_rounds.sh target/release/cleanse runs/subset/badnets/t0-s0/attack /tmp/rounds
#
# Runs FT for 2 epochs, ANP for one round (100 updates of batch 128) and I-BAU for one round on the
# teacher's defender images, and prints each one's training seconds (evaluation not counted) and
# the ratio to FT's time for the same number of image passes. A pass is one image through the
# model forward and backward, FT's unit of work; per image ANP makes 3 such passes (the noise's
# ascent, then the clean and the perturbed loss, backward together), I-BAU 12
# and 1 more forward (the round's perturbation search: the model's own prediction, then one pass;
# the outer loss; 4 fixed-point iterations of two inner gradients; two weight gradients). The
# extra forwards count against the method.
# FT's time per pass is its faster epoch's.
set -euo pipefail
bin=$1 teacher=$2 out=$3
rm -rf "$out" && mkdir -p "$out"
common=(--model "$teacher" --device cpu --threads 1)
"$bin" defend ft "${common[@]}" --epochs 2 --out "$out/ft" >"$out/ft.log" 2>&1
"$bin" defend anp "${common[@]}" --iterations 100 --out "$out/anp" >"$out/anp.log" 2>&1
"$bin" defend ibau "${common[@]}" --rounds 1 --out "$out/ibau" >"$out/ibau.log" 2>&1
python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
def epochs(name):
    """(images, training seconds) of each epoch: a record's seconds include its evaluation."""
    rs = json.load(open(f"{out}/{name}/report.json"))["epochs"]
    return [(e["images_per_sec"] * (e["seconds"] - e["eval_seconds"]),
             e["seconds"] - e["eval_seconds"]) for e in rs]
images, secs = min(epochs("ft"), key=lambda e: e[1])
per_pass = secs / images
print(f"FT: {images:.0f} images in {secs:.2f} s, {1000 * per_pass:.2f} ms per pass")
for name, passes in [("anp", 3), ("ibau", 12)]:
    n, secs = epochs(name)[0]
    ratio = secs / (n * passes * per_pass)
    print(f"{name}: {n:.0f} images in {secs:.2f} s, {n * passes:.0f} passes: "
          f"{ratio:.2f}x FT's time for as many passes")
EOF
