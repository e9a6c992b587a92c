#!/usr/bin/env python3
"""Plain-PyTorch anchor for `cargo bench --bench kernels`: the same kernels at the same
shapes, written as the reference code (timm 0.6.8's ViT, torchvision's ResNet50) computes them,
under the same benchmark names, so that each kernel gets a ratio.

ViT (vit_tiny_patchX): D 384, 6 heads, 301 tokens; `fwd` at batch 64 under `torch.no_grad()`,
`fwd_bwd` (forward, sum, backward) at batch 32. The MAE decoder (`mae_decoder/...`): D 256, 8
heads, 301 tokens, batch 32. ResNet50 first layers: batch 16 at 210x210.

Prints the median wall-clock milliseconds per call and the process CPU milliseconds per call
divided by the thread count (on a shared machine the latter approximates an idle machine's wall
time). Usage:

    python3 benches/reference_kernels.py --threads 2 [--seconds 3] [--only NAME]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

DIM, HEADS, TOKENS = 384, 6, 301
DECODER_DIM, DECODER_HEADS = 256, 8  # mae_vit_tiny_patchX_dec256d2b
LEAVES = []  # every tensor that requires a gradient, to clear their .grad between calls
INFER_BATCH, TRAIN_BATCH, IMAGE_BATCH, SIDE = 64, 32, 16, 210


def attention(qkv, heads=HEADS):
    # timm 0.6.8 Attention.forward without the output projection.
    b, n, c3 = qkv.shape
    c = c3 // 3
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(b, n, c)


def block_linears(d):
    """The linear maps of a transformer block of width d: (name, inputs, outputs)."""
    return [("qkv", d, 3 * d), ("proj", d, d), ("fc1", d, 4 * d), ("fc2", 4 * d, d)]


def cases():
    """(name, forward, needs_grad) with inputs made once."""
    r = torch.randn
    out = []

    def fwd(name, f):
        out.append((name, f, False))

    def fwd_bwd(name, f):
        out.append((name, f, True))

    def leaf(*shape, std=1.0):
        t = (r(*shape) * std).requires_grad_()
        LEAVES.append(t)
        return t

    qkv_i, qkv_t = r(INFER_BATCH, TOKENS, 3 * DIM), leaf(TRAIN_BATCH, TOKENS, 3 * DIM)
    fwd("vit/attention/fwd_b64", lambda: attention(qkv_i))
    fwd_bwd("vit/attention/fwd_bwd_b32", lambda: attention(qkv_t))

    w, b = leaf(DIM), leaf(DIM, std=0.1)
    x_i, x_t = r(INFER_BATCH, TOKENS, DIM), leaf(TRAIN_BATCH, TOKENS, DIM)
    fwd("vit/layer_norm/fwd_b64", lambda: F.layer_norm(x_i, (DIM,), w, b, 1e-6))
    fwd_bwd("vit/layer_norm/fwd_bwd_b32", lambda: F.layer_norm(x_t, (DIM,), w, b, 1e-6))

    s_i, s_t = r(INFER_BATCH, HEADS, TOKENS, TOKENS), leaf(TRAIN_BATCH, HEADS, TOKENS, TOKENS)
    fwd("vit/softmax/fwd_b64", lambda: s_i.softmax(dim=-1))
    fwd_bwd("vit/softmax/fwd_bwd_b32", lambda: s_t.softmax(dim=-1))

    h_i = r(INFER_BATCH, TOKENS, 4 * DIM)
    fwd("vit/gelu/fwd_b64", lambda: F.gelu(h_i))
    h_t = leaf(TRAIN_BATCH, TOKENS, 4 * DIM)
    fwd_bwd("vit/gelu/fwd_bwd_b32", lambda: F.gelu(h_t))

    pw, pb = leaf(DIM, 1, 1, 100, std=0.1), leaf(DIM, std=0.1)
    e_i, e_t = r(INFER_BATCH, 1, 12, 2500), r(TRAIN_BATCH, 1, 12, 2500)
    # timm PatchEmbed: Conv2d(kernel = stride = patch), flatten, transpose.
    embed = lambda e: F.conv2d(e, pw, pb, stride=(1, 100)).flatten(2).transpose(1, 2)
    fwd("vit/patch_embed/fwd_b64", lambda: embed(e_i))
    fwd_bwd("vit/patch_embed/fwd_bwd_b32", lambda: embed(e_t))

    for name, k_in, k_out in block_linears(DIM):
        lw, lb = leaf(k_out, k_in, std=0.05), leaf(k_out, std=0.1)
        # timm runs nn.Linear on [B, N, k_in], which PyTorch folds into one [B*N, k_in] product.
        xi, xt = r(INFER_BATCH * TOKENS, k_in), leaf(TRAIN_BATCH * TOKENS, k_in)
        fwd(f"vit/matmul_{name}/fwd_b64", lambda xi=xi, lw=lw, lb=lb: F.linear(xi, lw, lb))
        fwd_bwd(f"vit/matmul_{name}/fwd_bwd_b32", lambda xt=xt, lw=lw, lb=lb: F.linear(xt, lw, lb))

    dd = DECODER_DIM
    qkv_d = leaf(TRAIN_BATCH, TOKENS, 3 * dd)
    fwd_bwd("mae_decoder/attention/fwd_bwd_b32", lambda: attention(qkv_d, DECODER_HEADS))
    for name, k_in, k_out in block_linears(dd):
        lw, lb = leaf(k_out, k_in, std=0.05), leaf(k_out, std=0.1)
        xt = leaf(TRAIN_BATCH * TOKENS, k_in)
        fwd_bwd(f"mae_decoder/matmul_{name}/fwd_bwd_b32",
                lambda xt=xt, lw=lw, lb=lb: F.linear(xt, lw, lb))

    image, stem = r(IMAGE_BATCH, 3, SIDE, SIDE), leaf(64, 3, 7, 7, std=0.05)
    fwd("resnet50/conv_stem_7x7s2/fwd_b16", lambda: F.conv2d(image, stem, stride=2, padding=3))
    fwd_bwd("resnet50/conv_stem_7x7s2/fwd_bwd_b16",
            lambda: F.conv2d(image, stem, stride=2, padding=3))

    stem_out = leaf(IMAGE_BATCH, 64, 105, 105)
    fwd("resnet50/max_pool_3x3s2/fwd_b16", lambda: F.max_pool2d(stem_out, 3, 2, 1))
    fwd_bwd("resnet50/max_pool_3x3s2/fwd_bwd_b16", lambda: F.max_pool2d(stem_out, 3, 2, 1))

    hh, cw = leaf(IMAGE_BATCH, 64, 53, 53), leaf(64, 64, 3, 3, std=0.05)
    fwd("resnet50/conv_3x3/fwd_b16", lambda: F.conv2d(hh, cw, stride=1, padding=1))
    fwd_bwd("resnet50/conv_3x3/fwd_bwd_b16", lambda: F.conv2d(hh, cw, stride=1, padding=1))

    for name, channels, side in [("conv_3x3_layer3", 256, 14), ("conv_3x3_layer4", 512, 7)]:
        lx, lw = leaf(IMAGE_BATCH, channels, side, side), leaf(channels, channels, 3, 3, std=0.02)
        fwd(f"resnet50/{name}/fwd_b16",
            lambda lx=lx, lw=lw: F.conv2d(lx, lw, stride=1, padding=1))
        fwd_bwd(f"resnet50/{name}/fwd_bwd_b16",
                lambda lx=lx, lw=lw: F.conv2d(lx, lw, stride=1, padding=1))

    ew = leaf(256, 64, 1, 1, std=0.05)
    fwd("resnet50/conv_1x1_expand/fwd_b16", lambda: F.conv2d(hh, ew))
    fwd_bwd("resnet50/conv_1x1_expand/fwd_bwd_b16", lambda: F.conv2d(hh, ew))
    return out


def run(f, needs_grad):
    for t in LEAVES:
        t.grad = None  # a fresh gradient per call, as candle's backward returns a new store
    if needs_grad:
        f().sum().backward()
    else:
        with torch.no_grad():
            f()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="measurement time per kernel")
    ap.add_argument("--only", default="", help="run only names containing this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"{'kernel':44s} {'wall ms':>9s} {'cpu ms/thr':>10s}")
    for name, f, needs_grad in cases():
        if args.only not in name:
            continue
        run(f, needs_grad)  # warm-up (allocator, kernels selection)
        walls, cpus = [], []
        deadline = time.perf_counter() + args.seconds
        while len(walls) < 10 or (time.perf_counter() < deadline and len(walls) < 200):
            t0, c0 = time.perf_counter(), time.process_time()
            run(f, needs_grad)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        wall = statistics.median(walls) * 1e3
        cpu = statistics.median(cpus) * 1e3 / args.threads
        print(f"{name:44s} {wall:9.2f} {cpu:10.2f}", flush=True)


if __name__ == "__main__":
    main()
