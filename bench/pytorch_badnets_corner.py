#!/usr/bin/env python3
"""PyTorch cross-check of a finding in RESULTS.md: on the 4,000-image CIFAR-10 subset, the CIFAR
ResNet-18 learns the method spec's BadNets pattern much faster in the top-left corner than in the
bottom-right corner (where the spec puts it). Same architecture as bench/pytorch_resnet18.py;
the trigger is stamped on every poisoned image of every batch (no augmentation); plain SGD.
Run by hand, not in CI:

    python3 bench/pytorch_badnets_corner.py --corner bottom-right --poison 0.3 --epochs 8
    python3 bench/pytorch_badnets_corner.py --corner top-left --poison 0.3 --epochs 8
"""
import argparse
import glob
import os

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_resnet18 import ResNet18

PATTERN = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)


def load(files):
    raw = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in files]).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, raw[:, 0].astype(np.int64)


def stamp(x, corner):
    x = x.clone()
    r, c = (0, 0) if corner == "top-left" else (29, 29)
    x[:, :, r:r + 3, c:c + 3] = torch.from_numpy(PATTERN)
    return x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data/cifar10-subset"))
    p.add_argument("--corner", choices=["top-left", "bottom-right"], required=True)
    p.add_argument("--poison", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    files = sorted(glob.glob(os.path.join(a.data, "*.bin")))
    xtr, ytr = load([f for f in files if not os.path.basename(f).startswith("test")])
    xte, yte = load([f for f in files if os.path.basename(f).startswith("test")])
    xtr, ytr, xte, yte = map(torch.from_numpy, (xtr, ytr, xte, yte))
    candidates = np.flatnonzero(ytr.numpy() != 0)
    poisoned = torch.zeros(len(ytr), dtype=torch.bool)
    poisoned[rng.choice(candidates, int(round(a.poison * len(ytr))), replace=False)] = True
    model = ResNet18(a.width)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    norm = lambda x: (x - MEAN) / STD
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(ytr))
        for i in range(0, len(order) - 1, a.batch_size):
            idx = order[i:i + a.batch_size]
            x, y, pz = xtr[idx], ytr[idx].clone(), poisoned[idx]
            x[pz] = stamp(x[pz], a.corner)
            y[pz] = 0
            loss = F.cross_entropy(model(norm(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(norm(xte)).argmax(1) == yte).float().mean().item()
            keep = yte != 0
            asr = (model(norm(stamp(xte[keep], a.corner))).argmax(1) == 0).float().mean().item()
        print(f"epoch {epoch + 1} clean_acc {acc:.4f} asr {asr:.4f}", flush=True)


if __name__ == "__main__":
    main()
