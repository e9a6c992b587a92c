#!/usr/bin/env python3
"""Side-by-side anchor for `cargo bench --bench embed_ecg`: the reference architecture in plain
PyTorch (timm 0.6.8's VisionTransformer blocks as MMCL's ECGEncoder runs them, exact GELU,
LayerNorm eps 1e-6, global pooling + fc_norm), batch 64 of 1x12x2500, eval mode, no grad.

Prints wall-clock and process-CPU seconds per batch; on a shared machine the CPU time divided by
the thread count approximates the wall time on an idle one. Usage:

    python3 benches/reference_embed_ecg.py --threads 2 --iters 5
"""
import torch
import torch.nn as nn

from reference_common import Block, autocast, parse_args, warm_up_and_time


class Encoder(nn.Module):
    def __init__(self, dim=384, depth=3, heads=6, patch=(1, 100), grid=(12, 25)):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid[0] * grid[1], dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.fc_norm(x[:, 1:].mean(dim=1))


def main():
    args = parse_args(iters=5, batch=64)
    model = Encoder().eval().to(args.device)
    x = torch.randn(args.batch, 1, 12, 2500, device=args.device)
    with torch.no_grad(), autocast(args):
        warm_up_and_time(args, lambda: model(x), "batch", "embed_ecg")


if __name__ == "__main__":
    main()
