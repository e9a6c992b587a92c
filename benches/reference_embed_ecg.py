#!/usr/bin/env python3
"""Side-by-side anchor for `cargo bench --bench embed_ecg`: the reference architecture in plain
PyTorch (timm 0.6.8's VisionTransformer blocks as MMCL's ECGEncoder runs them, exact GELU,
LayerNorm eps 1e-6, global pooling + fc_norm), batch 64 of 1x12x2500, eval mode, no grad.

Prints wall-clock and process-CPU seconds per batch; on a shared machine the CPU time divided by
the thread count approximates the wall time on an idle one. Usage:

    python3 benches/reference_embed_ecg.py --threads 2 --iters 5
"""
import argparse
import resource
import time

import torch
import torch.nn as nn


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


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


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = Encoder().eval()
    x = torch.randn(args.batch, 1, 12, 2500)
    with torch.no_grad():
        model(x)
        t0, c0 = time.perf_counter(), cpu_seconds()
        for _ in range(args.iters):
            model(x)
        wall = (time.perf_counter() - t0) / args.iters
        cpu = (cpu_seconds() - c0) / args.iters
    print(
        f"torch {torch.__version__}, {args.threads} threads: wall {wall:.3f} s/batch "
        f"({args.batch / wall:.1f} samples/s), cpu {cpu:.3f} s/batch "
        f"({args.batch / (cpu / args.threads):.1f} samples/s at {args.threads} idle threads)"
    )


if __name__ == "__main__":
    main()
