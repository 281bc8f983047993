#!/usr/bin/env python3
"""PyTorch reference for `cleanse bench`: training and inference images/s of the same CIFAR
ResNet-18 (3x3 stem, no max-pool, BasicBlocks [2,2,2,2], width multiplier) on random 32x32 data,
SGD momentum 0.9, weight decay 5e-4, on the CPU or a CUDA GPU. Run by hand, not in CI:

    python3 bench/pytorch_resnet18.py --width 64 --batch-size 128 --steps 5 --warmup 2 --threads 2
    python3 bench/pytorch_resnet18.py --device cuda --width 64 --batch-size 128 --steps 20 --warmup 3

`--arch resnet18-imagenet --image-size 224` times torchvision's `resnet18` instead (at width 64
torchvision's own model; at other widths the same layout from bench/torch_models.py), the
reference for `cleanse bench --model resnet18-imagenet --image-size 224`.

On CUDA, PyTorch runs convolutions in TF32 by default (cuDNN); `--no-tf32` makes them plain fp32,
which is what Burn's wgpu backend computes.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, width=64, num_classes=10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        chans = [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)]
        self.layers = nn.Sequential(*[nn.Sequential(BasicBlock(i, o, s), BasicBlock(o, o, 1)) for i, o, s in chans])
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def imagenet_resnet18(width, num_classes):
    """torchvision's resnet18 (its own class at width 64, else the same layout at `width`)."""
    if width == 64:
        try:
            import torchvision
            return torchvision.models.resnet18(num_classes=num_classes)
        except ImportError:
            pass
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_models import Net
    return Net("resnet18-imagenet", "bcu", width, num_classes)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["resnet18", "resnet18-imagenet"], default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-tf32", action="store_true", help="plain fp32 convolutions and matmuls on CUDA")
    p.add_argument("--amp", choices=["bf16", "f16"], default=None,
                   help="automatic mixed precision (torch.autocast) on CUDA, fp32 master weights; "
                        "f16 with a GradScaler")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.device == "cuda":
        torch.backends.cudnn.allow_tf32 = not a.no_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    dev = torch.device(a.device)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(0)
    if a.arch == "resnet18":
        model = ResNet18(a.width).to(dev)
    else:
        model = imagenet_resnet18(a.width, 10).to(dev)
    print("parameters:", sum(p.numel() for p in model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(a.batch_size, 3, a.image_size, a.image_size, device=dev)
    y = torch.randint(0, 10, (a.batch_size,), device=dev)

    amp = {"bf16": torch.bfloat16, "f16": torch.float16}.get(a.amp)
    if amp is not None and a.device != "cuda":
        raise SystemExit("--amp is for --device cuda")
    scaler = torch.amp.GradScaler("cuda") if a.amp == "f16" else None

    def forward(inputs):
        if amp is None:
            return model(inputs)
        with torch.autocast("cuda", dtype=amp):
            return model(inputs)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(forward(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.item()

    model.train()
    warmup_seconds = []
    for _ in range(a.warmup):
        t = time.perf_counter()
        step()
        sync()
        warmup_seconds.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    train_ips = a.steps * a.batch_size / (time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        for _ in range(max(a.warmup, 1)):
            forward(x)
        sync()
        t = time.perf_counter()
        for _ in range(a.steps):
            forward(x)
        sync()
        infer_ips = a.steps * a.batch_size / (time.perf_counter() - t)
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}", "device": a.device,
        "gpu": torch.cuda.get_device_name() if a.device == "cuda" else None,
        "tf32_convolutions": a.device == "cuda" and not a.no_tf32, "amp": a.amp, "threads": a.threads, "arch": a.arch,
        "model_class": type(model).__module__ + "." + type(model).__name__,
        "image_size": a.image_size, "width": a.width,
        "batch_size": a.batch_size, "train_images_per_sec": train_ips, "inference_images_per_sec": infer_ips,
        "warmup_step_seconds": warmup_seconds,
    }, indent=2))


if __name__ == "__main__":
    main()
