#!/usr/bin/env python3
"""Writes the ImageNet ResNet-18 fixture of cleanse's import tests (tests/tests/interop.rs): a
torchvision-layout ResNet-18 (7x7 stride-2 stem, 3x3 stride-2 max-pool) of width 2 trained for a
few SGD steps in PyTorch, and PyTorch's logits for two fixed images. Run by hand, from the
repository root, with PyTorch (torchvision too, for the layout check):

    python3 bench/torchvision_fixture.py

Writes tests/fixtures/torch/resnet18-imagenet-tv.pth (`torch.save` of the state dict, zip format)
and tests/fixtures/torch/resnet18-imagenet.json (the logits of `inputs()`, normalised with
ImageNet's mean and std, as cleanse's `Normalization::imagenet`).

torchvision's own class has no width multiplier, so the fixture is bench/torch_models.py's `Net`
with the `bcu` naming; where torchvision is installed, the script first checks that at width 64
that model's state dict has torchvision `resnet18`'s names and shapes, key for key, and that
torchvision's model loaded with it gives the same logits.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import Net  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tests/fixtures/torch")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
WIDTH, CLASSES, SIDE = 2, 10, 64


def inputs():
    """x[i] = ((i * 7919) mod 255) / 255 over the flat [2, 3, SIDE, SIDE] index i."""
    i = torch.arange(2 * 3 * SIDE * SIDE, dtype=torch.int64)
    return (((i * 7919) % 255).to(torch.float32) / 255.0).view(2, 3, SIDE, SIDE)


def check_layout():
    try:
        import torchvision
    except ImportError:
        print("torchvision not installed: the layout check against it is skipped")
        return
    torch.manual_seed(0)
    ours = Net("resnet18-imagenet", "bcu", 64, CLASSES).eval()
    theirs = torchvision.models.resnet18(num_classes=CLASSES).eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b), "names differ from torchvision's resnet18"
    for k in a:
        assert a[k].shape == b[k].shape, f"{k}: {a[k].shape} vs {b[k].shape}"
    theirs.load_state_dict(a, strict=True)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6), "logits differ from torchvision's"
    print(f"layout: the state dict is torchvision {torchvision.__version__}'s resnet18, "
          f"{len(a)} tensors, same logits")


def trained():
    """Width 2, seeded, 30 SGD steps on seeded random images (weights and batch-norm statistics
    away from their initial values)."""
    torch.manual_seed(3)
    m = Net("resnet18-imagenet", "bcu", WIDTH, CLASSES)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(4)
    m.train()
    for _ in range(30):
        x = torch.rand(16, 3, SIDE, SIDE, generator=g)
        y = torch.randint(0, CLASSES, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m((x - MEAN) / STD), y).backward()
        opt.step()
    return m.eval()


def main():
    check_layout()
    m = trained()
    with torch.no_grad():
        logits = m((inputs() - MEAN) / STD)
    sd = m.state_dict()
    path = os.path.join(OUT, "resnet18-imagenet-tv.pth")
    torch.save(sd, path)
    print(f"{path}: {os.path.getsize(path)} bytes, {len(sd)} tensors")
    with open(os.path.join(OUT, "resnet18-imagenet.json"), "w") as f:
        json.dump({"arch": "resnet18-imagenet", "width": WIDTH, "classes": CLASSES, "side": SIDE,
                   "normalization": "imagenet",
                   "inputs": f"((i * 7919) mod 255) / 255 over the flat [2, 3, {SIDE}, {SIDE}] "
                             "index i",
                   "logits": logits.tolist()}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
