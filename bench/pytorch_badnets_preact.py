#!/usr/bin/env python3
"""A BadNets PreAct-ResNet-18 trained in PyTorch, for RESULTS.md's import/export round trip
("A model trained elsewhere"). Run by hand, not in CI (needs torch and safetensors):

    # train: writes a BackdoorBench-style checkpoint, the state dict under "model"
    python3 bench/pytorch_badnets_preact.py train --out /tmp/preact-badnets.pt
    # measure any PyTorch or cleanse-exported model the same way
    python3 bench/pytorch_badnets_preact.py eval --model /tmp/preact-badnets.pt
    python3 bench/pytorch_badnets_preact.py eval --model cleansed.safetensors

The trigger is cleanse's BadNets trigger (the method spec's 3x3 pattern in the bottom-right
corner, stamped on the [0,1] image); ASR is measured as cleanse does, on the test images whose
class is not the target. Images are normalised with the CIFAR-10 statistics cleanse uses.
Training: every training image of the subset, 10% poisoned (label -> target 0), no
augmentation, SGD lr 0.05 momentum 0.9 weight decay 5e-4, batch 32, 24 epochs, lr x0.1 at epochs
12 and 18: the settings of cleanse's subset preset.
"""
import argparse
import glob
import os

import numpy as np
import torch
import torch.nn.functional as F

from torch_models import Net

PATTERN = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.float32)
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/data/cifar10-subset")


def load(files):
    raw = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in files]).reshape(-1, 3073)
    x = raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return torch.from_numpy(x), torch.from_numpy(raw[:, 0].astype(np.int64))


def data(path):
    files = sorted(glob.glob(os.path.join(path, "*.bin")))
    train = load([f for f in files if not os.path.basename(f).startswith("test")])
    test = load([f for f in files if os.path.basename(f).startswith("test")])
    return train, test


def stamp(x):
    x = x.clone()
    x[:, :, -3:, -3:] = PATTERN
    return x


def measure(model, test, target):
    xte, yte = test
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model((xte[i:i + 500] - MEAN) / STD).argmax(1) for i in range(0, len(yte), 500)])
        keep = yte != target
        xt = stamp(xte[keep])
        pt = torch.cat([model((xt[i:i + 500] - MEAN) / STD).argmax(1) for i in range(0, len(xt), 500)])
    return (pred == yte).float().mean().item(), (pt == target).float().mean().item()


def load_model(path, width, classes):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu")
        sd = sd.get("model", sd)
    model = Net("preact-resnet18", "backdoorbench", width, classes)
    model.load_state_dict(sd)  # strict
    return model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["train", "eval"])
    p.add_argument("--data", default=DATA)
    p.add_argument("--out")
    p.add_argument("--model")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--poison", type=float, default=0.1)
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    (xtr, ytr), test = data(a.data)
    if a.command == "eval":
        acc, asr = measure(load_model(a.model, a.width, 10), test, a.target)
        print(f"{a.model}: clean_acc {acc:.4f} asr {asr:.4f} ({len(test[1])} test images)")
        return
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    candidates = np.flatnonzero(ytr.numpy() != a.target)
    chosen = rng.choice(candidates, int(round(a.poison * len(ytr))), replace=False)
    xtr, ytr = xtr.clone(), ytr.clone()
    xtr[chosen] = stamp(xtr[chosen])
    ytr[chosen] = a.target
    model = Net("preact-resnet18", "backdoorbench", a.width, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [a.epochs // 2, a.epochs * 3 // 4], 0.1)
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(ytr))
        for i in range(0, len(order) - 1, 32):
            idx = order[i:i + 32]
            loss = F.cross_entropy(model((xtr[idx] - MEAN) / STD), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        acc, asr = measure(model, test, a.target)
        print(f"epoch {epoch + 1} loss {loss.item():.4f} clean_acc {acc:.4f} asr {asr:.4f}", flush=True)
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": model.state_dict()}, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
