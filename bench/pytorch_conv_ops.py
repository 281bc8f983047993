#!/usr/bin/env python3
"""PyTorch's 3x3 stride-1 convolution op by op at each stage's shape of the CIFAR ResNet-18
(batch 128): milliseconds per call of the forward pass, the input gradient and the weight
gradient, the reference for `direct_conv WIDTH direct` (core/examples/direct_conv.rs). Run by
hand, not in CI, with as many threads on both sides:

    python3 bench/pytorch_conv_ops.py --width 16 --threads 1
    RAYON_NUM_THREADS=1 target/release/examples/direct_conv 16 direct

Inputs are NCHW, as cleanse's are: oneDNN's reorders into its blocked layouts are in the times.
"""
import argparse
import time

import torch
import torch.nn.functional as F


def ms(reps, f):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    n, w = a.batch_size, a.width
    print("| layer | fwd | input grad | weight grad |")
    print("|---|---|---|---|")
    for c, hw in [(w, 32), (2 * w, 16), (4 * w, 8), (8 * w, 4)]:
        x = torch.randn(n, c, hw, hw)
        wt = torch.randn(c, c, 3, 3) * 0.1
        dy = torch.randn(n, c, hw, hw)

        def grad(which):
            return torch.ops.aten.convolution_backward(
                dy, x, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, which)

        fwd = ms(a.reps, lambda: F.conv2d(x, wt, padding=1))
        dx = ms(a.reps, lambda: grad([True, False, False]))
        dw = ms(a.reps, lambda: grad([False, True, False]))
        print(f"| {c} ch {hw}x{hw} | {fwd:.2f} | {dx:.2f} | {dw:.2f} |")


if __name__ == "__main__":
    main()
