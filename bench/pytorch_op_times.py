#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release --example op_times`: milliseconds per call of ResNet-18's
3x3 convolution and batch norm at each stage's shape (batch 128) on the CPU. Run by hand:

    python3 bench/pytorch_op_times.py --width 16 --threads 2
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
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n, reps = 128, 5
    print("| layer | conv fwd | conv input grad | conv fwd+bwd | BN fwd | BN fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for c, hw in [(a.width, 32), (2 * a.width, 16), (4 * a.width, 8), (8 * a.width, 4)]:
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


if __name__ == "__main__":
    main()
