#!/usr/bin/env python3
"""Writes the browser demo's sample images: 2,000 training and 500 test records from the bundled CIFAR-10 and
GTSRB subsets, in the same 3,073-byte record format, drawn with a fixed seed so that every build
ships the same bytes (and every class of the sorted GTSRB files can appear).

    python3 web/samples.py --data ../shared/data --out web/dist/samples
"""
import argparse
import glob
import os
import random

RECORD = 3073
SETS = {
    # name: (folder, training files, test files)
    "cifar10": ("cifar10-subset", "data_batch_*.bin", "test_batch*.bin"),
    "gtsrb": ("gtsrb32-subset", "train_part*.bin", "test_part*.bin"),
}
TRAIN, TEST = 2000, 500  # the demo holds out the last 500 training records as unlabeled data


def records(pattern):
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"samples.py: no files match {pattern}")
    out = []
    for f in files:
        b = open(f, "rb").read()
        if len(b) % RECORD:
            raise SystemExit(f"samples.py: {f}: size {len(b)} is not a multiple of {RECORD}")
        out += [b[i : i + RECORD] for i in range(0, len(b), RECORD)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name, (folder, train, test) in SETS.items():
        for part, pattern, n in (("train", train, TRAIN), ("test", test, TEST)):
            recs = records(os.path.join(a.data, folder, pattern))
            pick = random.Random(0).sample(range(len(recs)), min(n, len(recs)))
            path = os.path.join(a.out, f"{name}-{part}.bin")
            with open(path + ".tmp", "wb") as f:
                f.write(b"".join(recs[i] for i in pick))
            os.replace(path + ".tmp", path)
            print(f"{path}: {len(pick)} images")


if __name__ == "__main__":
    main()
