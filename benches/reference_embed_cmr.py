#!/usr/bin/env python3
"""Side-by-side anchor for `cargo bench --bench embed_cmr`: torchvision's ResNet50 (v1.5, the
reference's image encoder without its fc layer) written out in plain PyTorch (torchvision is not
needed), batch 16 of 3x210x210, eval mode, no grad, 2 threads.

Prints wall-clock and process-CPU seconds per batch; on a shared machine the CPU time divided by
the thread count approximates the wall time on an idle one. Usage:

    python3 benches/reference_embed_cmr.py --threads 2 --iters 5
"""
import torch
import torch.nn as nn

from reference_common import autocast, parse_args, per_call, print_throughput


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # v1.5: the stride sits on the 3x3 convolution.
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers, inplanes = [], 64
        for planes, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
            for i in range(blocks):
                layers.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * 4
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.avgpool(self.layers(x)).flatten(1)  # [B, 2048]


def main():
    args = parse_args(iters=5, batch=16)
    torch.manual_seed(0)
    model = ResNet50Encoder().eval().to(args.device)
    x = torch.randn(args.batch, 3, 210, 210, device=args.device)
    with torch.no_grad(), autocast(args):
        assert model(x).shape == (args.batch, 2048)  # warm-up
        wall, cpu = per_call(lambda: model(x), args.iters)
    print_throughput(args, wall, cpu, "batch", "embed_cmr")


if __name__ == "__main__":
    main()
