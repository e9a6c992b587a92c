#!/usr/bin/env python3
"""Side-by-side anchor for `cargo bench --bench mmcl_step`: one multimodal training step of the
reference in plain PyTorch (no torchvision/timm needed): torchvision's ResNet50 trunk in train
mode (batch-statistics BatchNorm), timm 0.6.8's ViT blocks as MMCL's ECGEncoder (exact GELU,
LayerNorm eps 1e-6, global pooling + fc_norm, drop-path 0.1), lightly's SimCLR projection heads
(2048-2048-128 and 384-2048-128), the CLIP loss (tau 0.1, lambda 0.5), backward, and
torch.optim.Adam(lr 3e-3, weight_decay 1e-4) over the four parameter groups. Batch 16, images
3x210x210, ECGs 1x12x2500.

Prints wall-clock and process-CPU seconds per step; on a shared machine the CPU time divided by
the thread count approximates the wall time on an idle one. Usage:

    python3 benches/reference_mmcl_step.py --threads 2 --iters 3

`--parity DIR` instead runs the `mmcl_step_small` fixture (ResNet18 trunk, small ViT) in float32
and float64 and prints how far PyTorch's own float32 lands from the float64 reference values.
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_common import Block, autocast, parse_args, warm_up_and_time


# ----------------------------------------------------------------------------- image trunk
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


def resnet_trunk(block, layers, cin=3):
    """`nn.Sequential(*torchvision.models.resnetXX().children()[:-1])` (same indices)."""
    mods = [nn.Conv2d(cin, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, n in enumerate(layers):
        planes = 64 << i
        blocks = []
        for j in range(n):
            blocks.append(block(c, planes, (1 if i == 0 else 2) if j == 0 else 1))
            c = planes * block.expansion
        mods.append(nn.Sequential(*blocks))
    mods.append(nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(*mods), c


# ----------------------------------------------------------------------------- ECG encoder
class PatchEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class EcgEncoder(nn.Module):
    def __init__(self, dim, depth, heads, patch, grid, drop_path, num_classes=0):
        super().__init__()
        self.embed_dim = dim
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid[0] * grid[1], dim) * 0.02)
        dpr = [x.item() for x in torch.linspace(0, drop_path, depth)]
        self.blocks = nn.Sequential(*[Block(dim, heads, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.fc_norm(x[:, 1:].mean(dim=1))


# ----------------------------------------------------------------------------- heads, loss
class ProjectionHead(nn.Module):
    def __init__(self, din, hidden, dout):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, dout))

    def forward(self, x):
        return self.layers(x)


def clip_loss(z_img, z_ecg, temperature, lambda_0):
    z_img, z_ecg = F.normalize(z_img, dim=1), F.normalize(z_ecg, dim=1)
    logits = z_img @ z_ecg.T / temperature
    labels = torch.arange(len(z_img), device=z_img.device)
    return lambda_0 * F.cross_entropy(logits, labels) + (1 - lambda_0) * F.cross_entropy(
        logits.T, labels)


class Mmcl(nn.Module):
    def __init__(self, trunk, image_dim, ecg, hidden, out):
        super().__init__()
        self.encoder_imaging = trunk
        self.projection_head_imaging = ProjectionHead(image_dim, hidden, out)
        self.encoder_ecg = ecg
        self.projection_head_ecg = ProjectionHead(ecg.embed_dim, hidden, out)

    def loss(self, images, ecgs, temperature=0.1, lambda_0=0.5):
        z0 = self.projection_head_imaging(self.encoder_imaging(images).flatten(1))
        z1 = self.projection_head_ecg(self.encoder_ecg.forward_features(ecgs))
        return clip_loss(z0, z1, temperature, lambda_0)

    def optimizer(self, lr, weight_decay):
        return torch.optim.Adam([
            {"params": self.encoder_imaging.parameters()},
            {"params": self.projection_head_imaging.parameters()},
            {"params": self.encoder_ecg.parameters()},
            {"params": self.projection_head_ecg.parameters()},
        ], lr=lr, weight_decay=weight_decay)


def parity(directory):
    """PyTorch float32 against the float64 fixture `mmcl_step_small`."""
    from safetensors.torch import load_file
    from safetensors import safe_open
    weights = load_file(f"{directory}/mmcl_step_small.weights.safetensors")
    io = load_file(f"{directory}/mmcl_step_small.io.safetensors")
    with safe_open(f"{directory}/mmcl_step_small.io.safetensors", "pt") as f:
        meta = f.metadata()
    ecg_cfg = json.loads(meta["ecg"])
    for dtype in (torch.float32, torch.float64):
        trunk, dim = resnet_trunk(BasicBlock, [2, 2, 2, 2])
        grid = (12, 200 // 50)
        ecg = EcgEncoder(ecg_cfg["embed_dim"], ecg_cfg["depth"], ecg_cfg["num_heads"], (1, 50),
                         grid, 0.0, num_classes=2)
        model = Mmcl(trunk, dim, ecg, 256, 32).to(dtype).train()
        missing, unexpected = model.load_state_dict(
            {k: v.to(dtype) for k, v in weights.items()}, strict=False)
        assert not unexpected and all("num_batches_tracked" in k for k in missing), (
            missing, unexpected)
        loss = model.loss(io["input_imaging"].to(dtype), io["input_ecg"].to(dtype))
        loss.backward()
        ref = io["loss"].double().item()
        print(f"{dtype}: loss {loss.item():.9f} vs fixture {ref:.9f}, relative error "
              f"{abs(loss.item() - ref) / abs(ref):.3e}")
        params = dict(model.named_parameters())
        worst = 0.0
        for k, g in io.items():
            if k.startswith("grad."):
                ours = params[k[len("grad."):]].grad.double()
                worst = max(worst, ((ours - g.double()).abs().max() / g.double().abs().max()).item())
        print(f"  worst gradient error relative to the tensor's largest: {worst:.3e}")


def extra_args(ap):
    ap.add_argument("--parity", metavar="DIR", help="compare with the mmcl_step_small fixture")
    ap.add_argument("--part", choices=["step", "image", "ecg"], default="step",
                    help="image / ecg: that encoder alone (train-mode forward, a sum, "
                         "backward), as the bench group mmcl_encoders")


def main():
    args = parse_args(iters=3, batch=16, extra=extra_args)
    if args.parity:
        parity(args.parity)
        return
    trunk, dim = resnet_trunk(Bottleneck, [3, 4, 6, 3])
    ecg = EcgEncoder(384, 3, 6, (1, 100), (12, 25), drop_path=0.1)
    model = Mmcl(trunk, dim, ecg, 2048, 128).train().to(args.device)
    opt = model.optimizer(3e-3, 1e-4)
    images = torch.randn(args.batch, 3, 210, 210, device=args.device)
    ecgs = torch.randn(args.batch, 1, 12, 2500, device=args.device)

    if args.part != "step":
        encoder = model.encoder_imaging if args.part == "image" else model.encoder_ecg
        features = encoder if args.part == "image" else encoder.forward_features
        inputs = images if args.part == "image" else ecgs
        name = "resnet50_210px" if args.part == "image" else "vit_tiny"

        def passes():
            encoder.zero_grad(set_to_none=True)
            with autocast(args):
                total = features(inputs).sum()
            total.backward()

        warm_up_and_time(args, passes, "step", f"mmcl_encoders/{name}_fwd_bwd")
        return

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(args):
            loss = model.loss(images, ecgs)
        loss.backward()
        opt.step()

    warm_up_and_time(args, step, "step", "mmcl_step")


if __name__ == "__main__":
    main()
