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
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_common import Block, autocast, parse_args, warm_up_and_time
from reference_mmcl_step import PatchEmbed


def sincos_2d(dim, grid, cls_token):
    """The mae repo's `get_2d_sincos_pos_embed`: first half of the channels encode the column,
    second half the row; sines then cosines of `pos / 10000^(k / (D/4))`."""
    gh, gw = grid
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float32) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32),
                             indexing="ij")

    def half(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([half(cols), half(rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim), np.float32), table], axis=0)
    return torch.from_numpy(table.astype(np.float32))[None]


def simsiam_mlp(dim, hidden, final_bn):
    layers = [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
              nn.Linear(hidden, dim, bias=False)]
    if final_bn:
        layers.append(nn.BatchNorm1d(dim, affine=False))
    return nn.Sequential(*layers)


class MaskedAutoencoder(nn.Module):
    """The mae submodule's `MaskedAutoencoderViT` with its weight initialisation."""

    def __init__(self, m, ncc_weight, norm_pix_loss):
        super().__init__()
        dim, ddim = m["embed_dim"], m["decoder_embed_dim"]
        self.patch = tuple(m["patch_size"])
        self.grid = (m["img_size"][1] // self.patch[0], m["img_size"][2] // self.patch[1])
        self.ncc_weight, self.norm_pix_loss = ncc_weight, norm_pix_loss
        self.patch_embed = PatchEmbed(dim, self.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_2d(dim, self.grid, True), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, m["num_heads"]) for _ in range(m["depth"])])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_pos_embed = nn.Parameter(sincos_2d(ddim, self.grid, True),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(ddim, m["decoder_num_heads"]) for _ in range(m["decoder_depth"])])
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, self.patch[0] * self.patch[1])
        self.projector = simsiam_mlp(dim, m.get("proj_dim", 1024), True)
        self.predictor = simsiam_mlp(dim, m.get("pred_dim", 128), False)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def encode(self, x, ratio, noise=None):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        b, n, d = x.shape
        keep = int(n * (1 - ratio))
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].repeat(1, 1, d))
        mask = torch.ones(b, n, device=x.device)
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
        b = imgs.shape[0]
        (p, q), (h, w) = self.patch, self.grid
        x = imgs.reshape(b, 1, h, p, w, q).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h * w, p * q)

    def unpatchify(self, x):
        (p, q), (h, w) = self.patch, self.grid
        x = x.reshape(x.shape[0], h, w, p, q, 1).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], 1, h * p, w * q)

    def reconstruction_loss(self, imgs, pred):
        """(1 - w)·MSE over all patches of normalised-pixel targets + w·(1 - NCC); and NCC."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True) + 1e-6) ** 0.5
        mse = ((pred - target) ** 2).sum() / ((pred - target).numel() + 1e-5)

        def standard(a):
            return (a - a.mean(-1, keepdim=True)) / (a.var(-1, keepdim=True) + 1e-12) ** 0.5

        recon = self.unpatchify(pred)
        signals = imgs.numel() / imgs.shape[-1]
        ncc = (standard(imgs) * standard(recon)).sum(-1).sum() / (imgs.shape[-1] - 1) / signals
        return (1 - self.ncc_weight) * mse + self.ncc_weight * (1 - ncc), ncc

    def forward(self, imgs, ratio):
        latent, _, ids_restore = self.encode(imgs, ratio)
        loss, ncc = self.reconstruction_loss(imgs, self.decode(latent, ids_restore))
        latent2, _, _ = self.encode(imgs, ratio)
        z1, z2 = latent[:, 1:].mean(1), latent2[:, 1:].mean(1)
        p1, p2 = self.projector(z1), self.projector(z2)
        h1, h2 = self.predictor(p1), self.predictor(p2)
        loss_cos = -(F.cosine_similarity(h1, p2.detach()).mean()
                     + F.cosine_similarity(h2, p1.detach()).mean()) * 0.5
        return loss, loss_cos, ncc

    def encoder_state(self):
        """The encoder's tensors under the names of the mae repo's checkpoints."""
        skip = ("decoder", "mask_token", "projector", "predictor")
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith(skip)}


def main():
    args = parse_args(iters=5, batch=32)
    torch.manual_seed(0)
    model = MaskedAutoencoder({"img_size": [1, 12, 2500], "patch_size": [1, 100], "embed_dim": 384,
                               "depth": 3, "num_heads": 6, "decoder_embed_dim": 256,
                               "decoder_depth": 2, "decoder_num_heads": 8},
                              ncc_weight=0.1, norm_pix_loss=True).train().to(args.device)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in trained if p.ndim <= 1 or n.endswith(".bias")]
    opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                             {"params": decay, "weight_decay": 0.15}], lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(args.batch, 1, 12, 2500, device=args.device)

    def step():
        with autocast(args):
            loss, loss_cos, _ = model(x, 0.8)
        (loss + 0.1 * loss_cos).backward()
        opt.step()
        opt.zero_grad()

    warm_up_and_time(args, step, "step", "mae_step")


if __name__ == "__main__":
    main()
