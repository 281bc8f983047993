#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release --example op_times`: milliseconds per call of ResNet-18's
3x3 convolution and batch norm at each stage's shape (batch 128) on the CPU. Run by hand:

    python3 bench/pytorch_op_times.py --width 16 --threads 2

`--direct` is the twin of `direct_conv WIDTH direct` (core/examples/direct_conv.rs): the 3x3
convolution's forward, input gradient and weight gradient alone, 20 calls each, with as many
threads on both sides:

    python3 bench/pytorch_op_times.py --direct --width 16 --threads 1
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


def stages(width):
    """The 3x3 stride-1 convolutions of a 32-pixel ResNet-18 of `width`: channels and plane side."""
    return [(width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--direct", action="store_true",
                   help="the convolution's forward, input and weight gradient alone")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n, reps = 128, 5
    if a.direct:
        direct_only(a.width, n, 20)
        return
    print("| layer | conv fwd | conv input grad | conv fwd+bwd | BN fwd | BN fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for c, hw in stages(a.width):
        x = torch.randn(n, c, hw, hw)
        r = torch.randn(n, c, hw, hw)
        w = torch.randn(c, c, 3, 3) * 0.1
        fwd = ms(reps, lambda: F.conv2d(x, w, padding=1))
        dx = ms(reps, lambda: F.conv_transpose2d(x, w, padding=1))
        xa = x.clone().requires_grad_()
        wa = w.clone().requires_grad_()

        def conv_fb():
            xa.grad = None
            wa.grad = None
            (F.conv2d(xa, wa, padding=1) * r).sum().backward()

        bn = torch.nn.BatchNorm2d(c)

        def bn_fb():
            xa.grad = None
            (bn(xa) * r).sum().backward()

        with torch.no_grad():
            bnf = ms(reps, lambda: bn(xa))
        print(f"| {c} ch {hw}x{hw} | {fwd:.1f} | {dx:.1f} | {ms(reps, conv_fb):.1f} | {bnf:.1f} | {ms(reps, bn_fb):.1f} |")


def direct_only(width, n, reps):
    """Milliseconds per call of the 3x3 convolution's forward, input and weight gradient."""
    print("| layer | fwd | input grad | weight grad |")
    print("|---|---|---|---|")
    for c, hw in stages(width):
        x = torch.randn(n, c, hw, hw)
        w = torch.randn(c, c, 3, 3) * 0.1
        dy = torch.randn(n, c, hw, hw)

        def grad(which):
            return torch.ops.aten.convolution_backward(
                dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, which)

        fwd = ms(reps, lambda: F.conv2d(x, w, padding=1))
        dx = ms(reps, lambda: grad([True, False, False]))
        dw = ms(reps, lambda: grad([False, True, False]))
        print(f"| {c} ch {hw}x{hw} | {fwd:.2f} | {dx:.2f} | {dw:.2f} |")


if __name__ == "__main__":
    main()
