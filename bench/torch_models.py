"""The classifiers cleanse imports and exports (the CIFAR ResNet-18, PreAct-ResNet-18 and the
ImageNet ResNet-18, torchvision's layout), written in PyTorch with the parameter names of each
layout cleanse knows (see docs/cli.md, "Import your own model"):

- `backdoorbench`: BackdoorBench's PreActResNet18 and the kuangliu ResNet-18 (`conv1`, `bn1`,
  `layerS.B.shortcut.{0,1}`, `linear`);
- `bcu`: torchvision-style names, as in the authors' code (`downsample.{0,1}`, `fc`);
- `cleanse`: cleanse's own (`stem_conv`, `stem_bn`, `shortcut.conv`/`.bn`, PreAct `shortcut`,
  `fc`).

Inputs are normalised images; cleanse normalises inside its models instead.
"""
import torch.nn as nn
import torch.nn.functional as F

NAMINGS = ("backdoorbench", "bcu", "cleanse")


def _stem_names(naming):
    return ("stem_conv", "stem_bn") if naming == "cleanse" else ("conv1", "bn1")


def _fc_name(naming):
    return "linear" if naming == "backdoorbench" else "fc"


def _shortcut(naming, c_in, c_out, stride, with_bn):
    conv = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
    if naming == "cleanse":
        if not with_bn:
            return "shortcut", conv
        m = nn.Module()
        m.conv, m.bn = conv, nn.BatchNorm2d(c_out)
        m.forward = lambda x: m.bn(m.conv(x))
        return "shortcut", m
    name = "shortcut" if naming == "backdoorbench" else "downsample"
    layers = [conv, nn.BatchNorm2d(c_out)] if with_bn else [conv]
    return name, nn.Sequential(*layers)


class Block(nn.Module):
    """ResNet BasicBlock (`preact=False`) or pre-activation block (`preact=True`)."""

    def __init__(self, naming, preact, c_in, c_out, stride):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in if preact else c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip_name = None
        if stride != 1 or c_in != c_out:
            self.skip_name, skip = _shortcut(naming, c_in, c_out, stride, not preact)
            setattr(self, self.skip_name, skip)

    def skip(self, x):
        return getattr(self, self.skip_name)(x) if self.skip_name else x

    def forward(self, x):
        if self.preact:
            out = F.relu(self.bn1(x))
            skip = self.skip(out) if self.skip_name else x
            out = self.conv2(F.relu(self.bn2(self.conv1(out))))
            return out + skip
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.skip(x))


ARCHS = ("resnet18", "preact-resnet18", "resnet18-imagenet")


class Net(nn.Module):
    """`arch` is "resnet18" (CIFAR ResNet-18), "preact-resnet18" (BackdoorBench's) or
    "resnet18-imagenet" (torchvision's `resnet18`: 7x7 stride-2 stem, 3x3 stride-2 max-pool; with
    the `bcu` naming and width 64 its state dict is torchvision's, key for key)."""

    def __init__(self, arch, naming="backdoorbench", width=64, num_classes=10):
        super().__init__()
        assert naming in NAMINGS and arch in ARCHS
        self.preact = arch == "preact-resnet18"
        self.imagenet = arch == "resnet18-imagenet"
        w = width
        conv_name, bn_name = _stem_names(naming)
        self.stem = (conv_name, None if self.preact else bn_name)
        if self.imagenet:
            setattr(self, conv_name, nn.Conv2d(3, w, 7, 2, 3, bias=False))
        else:
            setattr(self, conv_name, nn.Conv2d(3, w, 3, 1, 1, bias=False))
        if not self.preact:
            setattr(self, bn_name, nn.BatchNorm2d(w))
        chans = [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)]
        for i, (c_in, c_out, s) in enumerate(chans):
            setattr(self, f"layer{i + 1}", nn.Sequential(
                Block(naming, self.preact, c_in, c_out, s),
                Block(naming, self.preact, c_out, c_out, 1)))
        self.fc_name = _fc_name(naming)
        setattr(self, self.fc_name, nn.Linear(8 * w, num_classes))

    def forward(self, x):
        out = getattr(self, self.stem[0])(x)
        if self.stem[1]:
            out = F.relu(getattr(self, self.stem[1])(out))
        if self.imagenet:
            out = F.max_pool2d(out, 3, 2, 1)
        for i in range(4):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return getattr(self, self.fc_name)(out)
