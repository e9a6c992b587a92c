#!/usr/bin/env python3
"""Side-by-side anchor for `cargo bench --bench mae_step`: one training step of the reference
masked autoencoder in plain PyTorch, as the mae repo's `MaskedAutoencoderViT` and
`engine_pretrain.py` run it (timm 0.6.8 blocks, exact GELU, LayerNorm eps 1e-6):
mae_vit_tiny_patchX (encoder 384/3/6, decoder 256/2/8) on a batch of 32 of 1x12x2500 with 1x100
patches, mask ratio 0.8, normalised-pixel MSE over all patches + 0.1 NCC, a second masked view
through the encoder for the SimSiam term (cos_weight 0.1), backward, AdamW (0.9, 0.95) with
weight decay 0.15 on the reference's two groups.

Prints wall-clock and process-CPU seconds per step; on a shared machine the CPU time divided by
the thread count approximates the wall time on an idle one. Usage:

    python3 benches/reference_mae_step.py --threads 2 --iters 5
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_common import Block, autocast, parse_args, per_call, print_throughput


def simsiam_mlp(dim, hidden, final_bn):
    layers = [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
              nn.Linear(hidden, dim, bias=False)]
    if final_bn:
        layers.append(nn.BatchNorm1d(dim, affine=False))
    return nn.Sequential(*layers)


class Mae(nn.Module):
    def __init__(self, dim=384, depth=3, heads=6, ddim=256, ddepth=2, dheads=8,
                 patch=(1, 100), grid=(12, 25)):
        super().__init__()
        self.patch, self.grid = patch, grid
        n = grid[0] * grid[1]
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        # Fixed tables: their values do not matter for the timing.
        self.register_buffer("pos_embed", torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, ddim) * 0.02)
        self.register_buffer("decoder_pos_embed", torch.randn(1, n + 1, ddim) * 0.02)
        self.decoder_blocks = nn.ModuleList([Block(ddim, dheads) for _ in range(ddepth)])
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, patch[0] * patch[1])
        self.projector = simsiam_mlp(dim, 1024, True)
        self.predictor = simsiam_mlp(dim, 128, False)

    def encode(self, x, ratio):
        x = self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        b, n, d = x.shape
        keep = int(n * (1 - ratio))
        ids_shuffle = torch.argsort(torch.rand(b, n), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].repeat(1, 1, d))
        mask = torch.ones(b, n)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat((cls, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def decode(self, x, ids_restore):
        x = self.decoder_embed(x)
        b, n = ids_restore.shape
        tokens = self.mask_token.repeat(b, n + 1 - x.shape[1], 1)
        x_ = torch.cat((x[:, 1:], tokens), dim=1)
        x_ = torch.gather(x_, 1, ids_restore[:, :, None].repeat(1, 1, x.shape[2]))
        x = torch.cat((x[:, :1], x_), dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def patchify(self, imgs):
        b, c = imgs.shape[:2]
        (p, q), (h, w) = self.patch, self.grid
        x = imgs.reshape(b, c, h, p, w, q).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h * w, p * q * c)

    def unpatchify(self, x):
        (p, q), (h, w) = self.patch, self.grid
        x = x.reshape(x.shape[0], h, w, p, q, 1).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], 1, h * p, w * q)

    def forward(self, imgs, ratio, ncc_weight=0.1):
        latent, mask, ids_restore = self.encode(imgs, ratio)
        pred = self.decode(latent, ids_restore)
        target = self.patchify(imgs)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        mse = ((pred - target) ** 2).sum() / ((pred - target).numel() + 1e-5)

        def standard(a):
            return (a - a.mean(-1, keepdim=True)) / (a.var(-1, keepdim=True) + 1e-12) ** 0.5

        recon = self.unpatchify(pred)
        ncc = (standard(imgs) * standard(recon)).sum(-1).sum() / (imgs.shape[-1] - 1) / (imgs.numel() / imgs.shape[-1])
        loss = (1 - ncc_weight) * mse + ncc_weight * (1 - ncc)
        latent2, _, _ = self.encode(imgs, ratio)
        p1, p2 = self.projector(latent[:, 1:].mean(1)), self.projector(latent2[:, 1:].mean(1))
        h1, h2 = self.predictor(p1), self.predictor(p2)
        loss_cos = -(F.cosine_similarity(h1, p2.detach()).mean()
                     + F.cosine_similarity(h2, p1.detach()).mean()) * 0.5
        return loss, loss_cos


def main():
    args = parse_args(iters=5, batch=32, mixed_precision=True)
    torch.manual_seed(0)
    model = Mae().train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias")]
    opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                             {"params": decay, "weight_decay": 0.15}], lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(args.batch, 1, 12, 2500)

    def step():
        with autocast(args):
            loss, loss_cos = model(x, 0.8)
        (loss + 0.1 * loss_cos).backward()
        opt.step()
        opt.zero_grad()

    step()
    wall, cpu = per_call(step, args.iters)
    print_throughput(args, wall, cpu, "step")


if __name__ == "__main__":
    main()
