#!/usr/bin/env python3
"""Side-by-side anchor for `cargo bench --bench finetune` (finetune_step_b32): one
fine-tuning step of the reference model in plain PyTorch, as mae's `models_vit` runs it with
`attention_pool` (timm 0.6.8 blocks, exact GELU, LayerNorm eps 1e-6, drop-path 0.2 rising over
the blocks, attention pooling with the token mean as query, fc_norm twice, 2-logit head),
`CrossEntropyLoss(label_smoothing=0.1)`, backward, AdamW over layer-decayed groups
(`param_groups_lrd`, decay 0.5, weight decay 0.2). Batch 32 of 1x12x2500, float32.

Prints wall-clock and process-CPU seconds per step. Usage:

    python3 benches/reference_finetune_step.py --threads 2 --iters 3
"""
import torch
import torch.nn as nn

from reference_common import Block, autocast, parse_args, warm_up_and_time


class FinetuneModel(nn.Module):
    def __init__(self, dim=384, depth=3, heads=6, patch=(1, 100), grid=(12, 25), classes=2):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid[0] * grid[1], dim) * 0.02)
        rates = [x.item() for x in torch.linspace(0, 0.2, depth)]
        self.blocks = nn.ModuleList([Block(dim, heads, r) for r in rates])
        self.attention_pool = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        t = x[:, 1:]
        pooled, _ = self.attention_pool(t.mean(dim=1, keepdim=True), t, t)
        features = self.fc_norm(pooled.squeeze(1))
        return self.head(self.fc_norm(features))


def layer_decay_groups(model, weight_decay=0.2, layer_decay=0.5):
    num_layers = len(model.blocks) + 1
    groups = {}
    for name, p in model.named_parameters():
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = num_layers
        no_decay = p.ndim == 1 or name in ("cls_token", "pos_embed")
        key = (layer, no_decay)
        groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                "lr": 1e-4 * layer_decay ** (num_layers - layer)})
        groups[key]["params"].append(p)
    return list(groups.values())


def main():
    args = parse_args(iters=3, batch=32)
    model = FinetuneModel().train().to(args.device)
    opt = torch.optim.AdamW(layer_decay_groups(model))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(args.batch, 1, 12, 2500, device=args.device)
    y = torch.arange(args.batch, device=args.device) % 2

    def step():
        opt.zero_grad()
        with autocast(args):
            loss = criterion(model(x), y)
        loss.backward()
        opt.step()

    warm_up_and_time(args, step, "step", "finetune_step")


if __name__ == "__main__":
    main()
