#!/usr/bin/env python3
"""Our trainers against PyTorch ones on the same cohort: exports a `mmcl reproduce` run's cache to
the reference code's `.pt` layout, trains the reference models in PyTorch on those files with the
run's short schedule (MAE, MMCL from random initialisation, MMCL from the MAE encoder), probes
their ECG encoders with `mmcl probe` (the same probe, splits and bootstrap as the run's), and
prints the probe results beside the run's own.

    python3 scripts/reference_reproduce.py --run OUT [--output OUT/pytorch] [--seed 0]
    python3 scripts/reference_reproduce.py --check-parity ../shared/parity

`OUT` is the output folder of `mmcl reproduce` (its `config.toml`, `cache/` and `results.json`).
Needs PyTorch (any 2.x) and NumPy; `--mmcl` names the `mmcl` binary (default
`target/release/mmcl`). Two threads by default, as the project's machines have.

The models are the plain-PyTorch transcriptions of the reference that the benchmark anchors use
(`benches/reference_*.py`): timm 0.6.8's ViT blocks, the mae submodule's
`MaskedAutoencoderViT` (fixed sin-cos positions, normalised-pixel MSE over all patches + NCC,
SimSiam term), MMCL's `ECGEncoder` (global pooling + `fc_norm`), torchvision's ResNet trunk,
lightly's SimCLR projection heads and the CLIP loss. `--check-parity` runs the MAE transcription
on the `mae_small` fixture computed by the reference code itself. The reference's own training
scripts are not run: they pin PyTorch 1.11, PyTorch Lightning 1.6.4 and a fork of timm, which do
not install beside a current Python; the exported files are what they read, under the names its
configs use (`mmcl/configs/dataset/cardiac.yaml`), for anyone who has that environment.

Schedules follow the reference: MAE with AdamW (betas and weight decay of the run, no decay on
biases and 1-D tensors), `lr = blr * batch / 4`, per-step linear warm-up then half cosine
(`util/lr_sched.py`), random crops and the augmentations of `main_pretrain.py` (FT surrogate,
jitter, rescaling); MMCL with Adam and L2 weight decay, per-epoch warm-up + cosine
(`LinearWarmupCosineAnnealingLR`), random ECG crops in training and crops from sample 0 in
validation (`schedule = "step"` advances the warm-up and cosine every step instead). The
checkpoint with the lowest validation loss is the one probed, as in the run.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benches"))
from reference_mae_step import MaskedAutoencoder  # noqa: E402
from reference_mmcl_step import (  # noqa: E402
    BasicBlock, Bottleneck, EcgEncoder, ProjectionHead, clip_loss, resnet_trunk)

SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- the cache
def read_safetensors(path):
    """Every tensor of a safetensors file as NumPy arrays (the format is a JSON header and raw
    little-endian data; reading it by hand spares a dependency)."""
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "F16": np.float16}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def load_cache(cache_dir):
    """Per split: ECGs [N, leads, T] (the 12, or the subset the index names in
    `ecg_lead_names`), images [N, C, H, W], labels [N, K], phenotypes [N, P], eids."""
    with open(os.path.join(cache_dir, "index.json")) as f:
        index = json.load(f)
    shards = {}
    per_split = {s: {"ecg": [], "image": [], "labels": [], "phenotypes": [], "eid": []}
                 for s in SPLITS}
    for subject in index["subjects"]:
        split = subject["split"]
        if split not in per_split:
            continue
        shard = subject["shard"]
        if shard not in shards:
            shards[shard] = read_safetensors(
                os.path.join(cache_dir, f"shard-{shard:05d}.safetensors"))
        row = subject["row"]
        d = per_split[split]
        d["ecg"].append(shards[shard]["ecg"][row])
        d["image"].append(shards[shard]["image"][row])
        d["labels"].append([np.nan if v is None else v for v in subject["labels"]])
        d["phenotypes"].append([np.nan if v is None else v for v in subject["phenotypes"]])
        d["eid"].append(subject["eid"])
    out = {}
    for split, d in per_split.items():
        out[split] = {k: np.asarray(v, dtype=np.float32 if k != "eid" else np.int64)
                      for k, v in d.items()}
    return index, out


def export_reference_layout(index, data, folder):
    """Writes the files the reference's configs name: `ecgs_<split>_ecg_imaging_noBase_gn.pt`
    (the cache's ECGs are already baseline-removed and group-normalised), `images_<split>_
    ecg_imaging.pt`, `labels_<split>_<disease>_all.pt` and `phenotypes_<split>.pt`."""
    os.makedirs(folder, exist_ok=True)
    for split, d in data.items():
        torch.save(torch.from_numpy(d["ecg"]), f"{folder}/ecgs_{split}_ecg_imaging_noBase_gn.pt")
        torch.save(torch.from_numpy(d["image"]), f"{folder}/images_{split}_ecg_imaging.pt")
        for k, name in enumerate(index["label_names"]):
            labels = np.nan_to_num(d["labels"][:, k]).astype(np.int64)
            torch.save(torch.from_numpy(labels), f"{folder}/labels_{split}_{name}_all.pt")
        torch.save(torch.from_numpy(d["phenotypes"]), f"{folder}/phenotypes_{split}.pt")
    leads = len(index.get("ecg_lead_names") or range(12))
    with open(f"{folder}/layout.json", "w") as f:
        json.dump({"ecg": f"float32 [N, {leads}, T]",
                   "ecg_leads": index.get("ecg_lead_names"), "image": "float32 [N, C, H, W]",
                   "labels": index["label_names"], "phenotypes": index["phenotype_names"],
                   "subjects": {s: len(d["eid"]) for s, d in data.items()}}, f, indent=1)


def load_reference_layout(folder, split):
    ecg = torch.load(f"{folder}/ecgs_{split}_ecg_imaging_noBase_gn.pt", weights_only=True)
    image = torch.load(f"{folder}/images_{split}_ecg_imaging.pt", weights_only=True)
    return ecg, image


# ----------------------------------------------------------------------------- augmentations
def crop(ecg, length, random_start, gen):
    """Crops `[B, leads, T]` to `length` samples: a start uniform in [0, T - length) per sample
    (NumPy's exclusive high, as the reference's `CropResizing`), or 0."""
    t = ecg.shape[-1]
    if not random_start or t - length <= 1:
        return ecg[..., :length]
    starts = torch.randint(0, t - length, (ecg.shape[0],), generator=gen)
    return torch.stack([e[..., s:s + length] for e, s in zip(ecg, starts.tolist())])


def ft_surrogate(x, magnitude, gen):
    """Phase-randomised surrogate of each sample, one random phase per frequency shared by the
    leads, DC (and Nyquist) untouched, so that the result stays real."""
    t = x.shape[-1]
    spectrum = torch.fft.rfft(x.double(), dim=-1)
    phases = torch.rand(x.shape[0], 1, spectrum.shape[-1], generator=gen, dtype=torch.float64)
    phases = magnitude * 2 * math.pi * phases
    phases[..., 0] = 0
    if t % 2 == 0:
        phases[..., -1] = 0
    return torch.fft.irfft(spectrum * torch.polar(torch.ones_like(phases), phases), n=t,
                           dim=-1).float()


def augment_ecg(x, cfg, gen):
    """`main_pretrain.py`'s augmentations per sample with probability `apply_prob`: FT surrogate
    (probability `ft_surrogate_prob`), jitter `x + a·x·N(0, σ)`, rescaling by `N(1, σ)`."""
    b = x.shape[0]
    applied = torch.rand(b, generator=gen) < cfg["apply_prob"]
    surrogate = applied & (torch.rand(b, generator=gen) < cfg["ft_surrogate_prob"])
    out = x.clone()
    if surrogate.any():
        out[surrogate] = ft_surrogate(x[surrogate], cfg["ft_surrogate_phase_noise"], gen)
    noise = torch.randn(x.shape, generator=gen) * cfg["jitter_sigma"]
    jittered = out + cfg["jitter_amplitude"] * out * noise
    scale = 1 + cfg["rescaling_sigma"] * torch.randn(b, 1, 1, generator=gen)
    out = torch.where(applied[:, None, None], jittered * scale, out)
    return out


# ----------------------------------------------------------------------------- models
def timm_init(module):
    """timm 0.6.8's ViT initialisation (`init_weights_vit_timm`): Linear weights truncated
    normal σ 0.02, zero biases; position embedding truncated normal σ 0.02; class token
    normal σ 1e-6."""
    for mod in module.modules():
        if isinstance(mod, nn.Linear):
            nn.init.trunc_normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    nn.init.trunc_normal_(module.pos_embed, std=0.02)
    nn.init.normal_(module.cls_token, std=1e-6)


def torchvision_init(trunk):
    """torchvision's ResNet initialisation: Kaiming-normal (fan out) convolutions, BatchNorm 1/0."""
    for mod in trunk.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


def ecg_config_json(ecg, m, weight_init):
    """The encoder configuration `mmcl probe --config` reads for a checkpoint that carries none
    (no drop-path: embedding is inference)."""
    return {"model": ecg["model"], "img_size": ecg["input_size"], "patch_size": ecg["patch_size"],
            "embed_dim": m["embed_dim"], "depth": m["depth"], "num_heads": m["num_heads"],
            "mlp_ratio": 4.0, "qkv_bias": True, "drop_rate": 0.0, "attn_drop_rate": 0.0,
            "drop_path_rate": 0.0, "global_pool": True, "attention_pool": False,
            "num_classes": 0, "layer_norm_eps": 1e-6, "weight_init": weight_init}


# ----------------------------------------------------------------------------- training
def batches(n, batch_size, gen, shuffle):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def half_cosine(base, warmup, total, position, floor=0.0):
    """Linear warm-up over `warmup` then half cosine to `floor` at `total` (`util/lr_sched.py`
    with a fractional epoch; `LinearWarmupCosineAnnealingLR` at integer epochs with warm-up 0)."""
    if position < warmup:
        return base * position / warmup
    span = max(total - warmup, 1e-12)
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * (position - warmup) / span))


def epoch_schedule(base, warmup, total, epoch):
    """`LinearWarmupCosineAnnealingLR(warmup, total)` (start 0, eta_min 0) at an integer epoch."""
    if epoch < warmup:
        return epoch * base / max(warmup - 1, 1)
    return 0.5 * base * (1 + math.cos(math.pi * (epoch - warmup) / max(total - warmup, 1)))


def train_mae(cfg, train_ecg, val_ecg, seed, log):
    m, loss_cfg = cfg["model"], cfg["loss"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MaskedAutoencoder(m, loss_cfg["ncc_weight"], loss_cfg["norm_pix_loss"])
    decay = [p for n, p in model.named_parameters()
             if p.requires_grad and p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in model.named_parameters()
                if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))]
    opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                             {"params": decay, "weight_decay": cfg["weight_decay"]}],
                            lr=0.0, betas=tuple(cfg["betas"]), eps=cfg["eps"])
    lr = cfg.get("lr") or cfg["blr"] * cfg["batch_size"] / 4
    length = m["img_size"][2]
    best = (math.inf, None, -1)
    for epoch in range(cfg["max_epochs"]):
        model.train()
        steps = batches(len(train_ecg), cfg["batch_size"], gen, True)
        t0, total = time.time(), 0.0
        for i, idx in enumerate(steps):
            rate = half_cosine(lr, cfg["warmup_epochs"], cfg["max_epochs"], epoch + i / len(steps),
                               cfg["min_lr"])
            for g in opt.param_groups:
                g["lr"] = rate
            x = crop(train_ecg[idx], length, cfg["random_crop"], gen)
            x = augment_ecg(x, cfg["augment"], gen)[:, None]
            loss, loss_cos, _ = model(x, loss_cfg["mask_ratio"])
            (loss + loss_cfg["cos_weight"] * loss_cos).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += loss.item()
        model.eval()
        with torch.no_grad():
            val, ncc, count = 0.0, 0.0, 0
            for idx in batches(len(val_ecg), cfg["batch_size"], gen, False):
                x = val_ecg[idx][..., :length][:, None]
                loss, _, c = model(x, loss_cfg["mask_ratio"])
                val += loss.item() * len(idx)
                ncc += c.item() * len(idx)
                count += len(idx)
        val, ncc = val / count, ncc / count
        log(f"MAE epoch {epoch + 1}/{cfg['max_epochs']}: train loss {total / len(steps):.4f}, "
            f"val loss {val:.4f}, ncc {ncc:.3f}, {time.time() - t0:.0f} s")
        if val < best[0]:
            best = (val, model.encoder_state(), epoch + 1)
    return best


class Multimodal(nn.Module):
    """MMCL's `MultimodalSimCLR`: ResNet trunk + projection head, ECG encoder + projection head."""

    def __init__(self, cfg, channels, seed):
        super().__init__()
        torch.manual_seed(seed)
        arch = cfg["imaging"]["model"]
        block, layers = {"resnet18": (BasicBlock, [2, 2, 2, 2]),
                         "resnet50": (Bottleneck, [3, 4, 6, 3])}[arch]
        self.encoder_imaging, image_dim = resnet_trunk(block, layers, channels)
        torchvision_init(self.encoder_imaging)
        ecg, m = cfg["ecg"], cfg["ecg_model"]
        grid = (ecg["input_size"][1] // ecg["patch_size"][0],
                ecg["input_size"][2] // ecg["patch_size"][1])
        self.encoder_ecg = EcgEncoder(m["embed_dim"], m["depth"], m["num_heads"],
                                      tuple(ecg["patch_size"]), grid, ecg["drop_path"])
        timm_init(self.encoder_ecg)
        hidden, out = cfg["embedding_dim"], cfg["projection_dim"]
        self.projection_head_imaging = ProjectionHead(image_dim, hidden, out)
        self.projection_head_ecg = ProjectionHead(m["embed_dim"], hidden, out)

    def loss(self, images, ecgs, temperature, lambda_0):
        z0 = self.projection_head_imaging(self.encoder_imaging(images).flatten(1))
        z1 = self.projection_head_ecg(self.encoder_ecg.forward_features(ecgs))
        return clip_loss(z0, z1, temperature, lambda_0)


def train_mmcl(cfg, data, seed, init, log, name):
    train_ecg, train_img = data["train"]
    val_ecg, val_img = data["val"]
    model = Multimodal(cfg, train_img.shape[1], seed)
    if init is not None:
        # MMCL's `load_pretrained_model`: the MAE encoder's tensors, non-strict (its fixed
        # position table becomes a trained parameter here, as in the reference).
        missing, unexpected = model.encoder_ecg.load_state_dict(init, strict=False)
        assert not unexpected, unexpected
        assert set(missing) <= {"fc_norm.weight", "fc_norm.bias"}, missing
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([
        {"params": model.encoder_imaging.parameters()},
        {"params": model.projection_head_imaging.parameters()},
        {"params": model.encoder_ecg.parameters()},
        {"params": model.projection_head_ecg.parameters()},
    ], lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
        weight_decay=cfg["weight_decay"])
    length = cfg["ecg"]["input_size"][2]
    tau, lam = cfg["temperature"], cfg["lambda_0"]
    best = (math.inf, None, -1)
    per_step = cfg.get("schedule", "epoch") == "step"
    for epoch in range(cfg["max_epochs"]):
        rate = epoch_schedule(cfg["lr"], cfg["warmup_epochs"], cfg["max_epochs"], epoch)
        model.train()
        t0, total, steps = time.time(), 0.0, 0
        order = batches(len(train_ecg), cfg["batch_size"], gen, True)
        for i, idx in enumerate(order):
            if per_step:  # `schedule = "step"`: warm-up and cosine advance every step
                rate = half_cosine(cfg["lr"], cfg["warmup_epochs"], cfg["max_epochs"],
                                   epoch + i / len(order))
            for g in opt.param_groups:
                g["lr"] = rate
            if len(idx) < 2:
                continue  # a contrastive loss needs two pairs
            x = crop(train_ecg[idx], length, cfg["ecg"]["random_crop"], gen)[:, None]
            loss = model.loss(train_img[idx], x, tau, lam)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            total, steps = total + loss.item(), steps + 1
        # Validation as the reference's Lightning loop runs it: the model in eval mode
        # (running BatchNorm statistics, no drop-path), batch by batch, losses averaged.
        model.eval()
        with torch.no_grad():
            val, count = 0.0, 0
            for idx in batches(len(val_ecg), cfg["batch_size"], gen, False):
                if len(idx) < 2:
                    continue
                loss = model.loss(val_img[idx], val_ecg[idx][..., :length][:, None], tau, lam)
                val, count = val + loss.item() * len(idx), count + len(idx)
        val /= count
        log(f"{name} epoch {epoch + 1}/{cfg['max_epochs']}: train loss {total / steps:.4f}, "
            f"val loss {val:.4f}, lr {rate:.3e}, {time.time() - t0:.0f} s")
        if val < best[0]:
            state = {f"encoder_ecg.{k}": v.detach().clone()
                     for k, v in model.encoder_ecg.state_dict().items()}
            best = (val, state, epoch + 1)
    return best


# ----------------------------------------------------------------------------- probing
def probe(mmcl, cache, checkpoint, config_json, output, bootstrap, log):
    if os.path.exists(output):
        log(f"probe {output} exists: reused")
    else:
        cmd = [mmcl, "probe", "--cache", cache, "--encoder", checkpoint, "--config", config_json,
               "--bootstrap", str(bootstrap), "--output", output]
        log(" ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = {}
    for task in ("phenotypes", "diseases"):
        path = os.path.join(output, task, "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                summary[task] = json.load(f)
    return summary


def metric_table(summary, task, metric):
    """`{target: value}` from a probe's metrics.json (`targets`: a list of per-target records
    whose metrics hold a `value` and its interval)."""
    out = {}
    for target in summary.get(task, {}).get("targets", []):
        if metric in target:
            out[target["name"]] = target[metric]["value"]
    return out


def auroc(y, score):
    """Area under the ROC curve by the rank statistic (ties count half); NaN without both
    classes."""
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return (ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def paired_difference(first, second, test, resamples, seed=0):
    """First minus second encoder on the same bootstrap resamples of the test rows: mean
    phenotype R² and each disease's AUROC, with 95 % percentile intervals (the pipeline's
    `comparisons`, computed here from the probes' test predictions)."""
    y, labels = test["phenotypes"], test["labels"]
    rng = np.random.default_rng(seed)
    n = len(y)

    def stats(rows):
        out = []
        for pred_p, pred_d in (first, second):
            yy, pp = y[rows], pred_p[rows]
            ok = ~np.isnan(yy)
            r2 = [1 - ((pp[m, k] - yy[m, k]) ** 2).sum() / ((yy[m, k] - yy[m, k].mean()) ** 2).sum()
                  for k in range(y.shape[1]) for m in [ok[:, k]]]
            au = [auroc(labels[rows, k], pred_d[rows, k]) for k in range(labels.shape[1])]
            out.append([float(np.mean(r2))] + au)
        return np.array(out[0]) - np.array(out[1])

    point = stats(np.arange(n))
    draws = np.array([stats(rng.integers(0, n, n)) for _ in range(resamples)])
    low, high = np.nanpercentile(draws, [2.5, 97.5], axis=0)
    return [(float(p), float(a), float(b)) for p, a, b in zip(point, low, high)]


def test_predictions(probe_dir):
    return (np.load(os.path.join(probe_dir, "phenotypes", "predictions.npy")),
            np.load(os.path.join(probe_dir, "diseases", "predictions.npy")))


# ----------------------------------------------------------------------------- parity
def check_parity(directory):
    """The MAE transcription on the reference's own `mae_small` fixture."""
    io = read_safetensors(f"{directory}/mae_small.io.safetensors")
    weights = read_safetensors(f"{directory}/mae_small.weights.safetensors")
    with open(f"{directory}/mae_small.io.safetensors", "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = {k: json.loads(v) for k, v in json.loads(f.read(n))["__metadata__"].items()}
    model = MaskedAutoencoder(meta, meta["ncc_weight"], meta["norm_pix_loss"])
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v.copy()) for k, v in weights.items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(io["input"].copy())
        latent, mask, ids = model.encode(x, meta["mask_ratio"], torch.from_numpy(io["noise"].copy()))
        pred = model.decode(latent, ids)
        loss, _ = model.reconstruction_loss(x, pred)
    worst = lambda a, b: float((a - torch.from_numpy(b.copy())).abs().max())  # noqa: E731
    ref = float(io["loss_reference"].reshape(-1)[0])
    print(f"mae_small: latent max |d| {worst(latent, io['latent']):.2e}, pred max |d| "
          f"{worst(pred, io['pred']):.2e}, mask max |d| {worst(mask, io['mask']):.1e}, loss "
          f"{loss.item():.7f} vs {ref:.7f} (relative {abs(loss.item() - ref) / abs(ref):.1e})")
    ok = worst(pred, io["pred"]) < 1e-4 and abs(loss.item() - ref) <= 1e-5 * abs(ref)
    print("parity:", "ok" if ok else "FAILED")
    return ok


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="output folder of `mmcl reproduce`")
    ap.add_argument("--output", help="where to write (default RUN/pytorch)")
    ap.add_argument("--seed", type=int, default=0, help="PyTorch seed of every stage")
    ap.add_argument("--ours", help="the run's results to compare with (default RUN/results.json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--mmcl", default=os.path.join(REPO, "target", "release", "mmcl"))
    ap.add_argument("--check-parity", metavar="DIR",
                    help="check the MAE transcription against the mae_small fixture and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.check_parity:
        sys.exit(0 if check_parity(args.check_parity) else 1)
    if not args.run:
        ap.error("--run OUT (a `mmcl reproduce` output folder) is needed")
    run = os.path.abspath(args.run)
    out = os.path.abspath(args.output or os.path.join(run, "pytorch"))
    os.makedirs(out, exist_ok=True)
    logfile = open(os.path.join(out, "log.txt"), "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    with open(os.path.join(run, "config.toml"), "rb") as f:
        config = tomllib.load(f)
    cache = os.path.join(run, "cache")
    log(f"torch {torch.__version__}, {args.threads} threads; reading {cache}")
    index, data = load_cache(cache)
    folder = os.path.join(out, "data")
    export_reference_layout(index, data, folder)
    sizes = ", ".join(f"{s} {len(d['eid'])}" for s, d in data.items())
    log(f"exported the reference's .pt layout to {folder} ({sizes})")
    tensors = {s: load_reference_layout(folder, s) for s in ("train", "val")}

    mae_cfg, mmcl_cfg = config["mae"], config["mmcl"]
    mmcl_cfg = dict(mmcl_cfg, ecg_model=mae_cfg["model"])
    seed = args.seed
    # A stage whose checkpoint exists is reused (delete the file to retrain it), as
    # `mmcl reproduce` reuses finished stages; its time comes from the earlier comparison.json.
    previous = os.path.join(out, "comparison.json")
    timings = {}
    if os.path.exists(previous):
        with open(previous) as f:
            timings = json.load(f).get("seconds", {})
    checkpoints = {"mae": os.path.join(out, "mae-checkpoint-best.pth")}
    if os.path.exists(checkpoints["mae"]):
        log(f"reusing {checkpoints['mae']}")
        mae_state = torch.load(checkpoints["mae"], weights_only=True)["model"]
    else:
        t0 = time.time()
        best = train_mae(mae_cfg, tensors["train"][0], tensors["val"][0], seed, log)
        timings["mae"] = time.time() - t0
        log(f"MAE: best validation loss {best[0]:.4f} at epoch {best[2]}")
        mae_state = best[1]
        torch.save({"model": mae_state, "epoch": best[2]}, checkpoints["mae"])
    for name, init in (("mmcl", None), ("mae_mmcl", mae_state)):
        checkpoints[name] = os.path.join(out, f"{name}-checkpoint_best_loss.ckpt")
        if os.path.exists(checkpoints[name]):
            log(f"reusing {checkpoints[name]}")
            continue
        t0 = time.time()
        best = train_mmcl(mmcl_cfg, tensors, seed, init, log, name)
        timings[name] = time.time() - t0
        log(f"{name}: best validation loss {best[0]:.4f} at epoch {best[2]}")
        torch.save({"state_dict": best[1], "epoch": best[2]}, checkpoints[name])

    configs = {
        "mae": ecg_config_json(mmcl_cfg["ecg"], mae_cfg["model"], "mae"),
        "mmcl": ecg_config_json(mmcl_cfg["ecg"], mae_cfg["model"], "timm"),
    }
    for k, v in configs.items():
        with open(os.path.join(out, f"encoder-{k}.json"), "w") as f:
            json.dump(v, f, indent=1)
    with open(args.ours or os.path.join(run, "results.json")) as f:
        ours = json.load(f)["encoders"]
    rows = {}
    for name, ckpt in checkpoints.items():
        cfg_json = os.path.join(out, f"encoder-{'mae' if name == 'mae' else 'mmcl'}.json")
        s = probe(args.mmcl, cache, ckpt, cfg_json, os.path.join(out, "probe", name),
                  args.bootstrap, log)
        rows[name] = s
    results = {"torch": torch.__version__, "seed": seed, "threads": args.threads,
               "seconds": timings, "pytorch": {}, "ours": {}}
    for name in checkpoints:
        r2 = metric_table(rows[name], "phenotypes", "r2")
        auroc = metric_table(rows[name], "diseases", "auroc")
        results["pytorch"][name] = {"r2": r2, "auroc": auroc}
        ph = ours[name]["phenotypes"]
        results["ours"][name] = {
            "r2": {k: v["r2"] for k, v in ph.items() if isinstance(v, dict)},
            "auroc": {k: v["auroc"] for k, v in ours[name]["diseases"].items()},
            "mean_r2": ph["mean_r2"]}
    with open(os.path.join(out, "comparison.json"), "w") as f:
        json.dump(results, f, indent=1)

    names = [n for n in index["phenotype_names"]]
    print()
    print("| encoder | trainer | mean R² | " + " | ".join(names) + " | "
          + " | ".join(f"{d} AUROC" for d in index["label_names"]) + " |")
    print("|---" * (3 + len(names) + len(index["label_names"])) + "|")
    for name in checkpoints:
        for who in ("ours", "pytorch"):
            r = results[who][name]
            r2 = r["r2"]
            mean = r.get("mean_r2") or (sum(r2[n] for n in names if n in r2) / max(len(r2), 1))
            cells = [f"{r2.get(n, float('nan')):.3f}" for n in names]
            cells += [f"{r['auroc'].get(d, float('nan')):.3f}" for d in index["label_names"]]
            print(f"| {name} | {who} | {mean:.3f} | " + " | ".join(cells) + " |")
    print()
    test = data["test"]
    preds = {name: test_predictions(os.path.join(out, "probe", name)) for name in checkpoints}
    results["pytorch_comparisons"] = {}
    header = ["mean R²"] + [f"{d} AUROC" for d in index["label_names"]]
    print("| PyTorch, paired (first − second) | " + " | ".join(header) + " |")
    print("|---" * (1 + len(header)) + "|")
    for first, second in (("mae_mmcl", "mae"), ("mmcl", "mae"), ("mae_mmcl", "mmcl")):
        diffs = paired_difference(preds[first], preds[second], test, min(args.bootstrap, 1000))
        results["pytorch_comparisons"][f"{first}_vs_{second}"] = dict(zip(header, diffs))
        cells = [f"{p:+.3f} [{a:+.3f}, {b:+.3f}]" for p, a, b in diffs]
        print(f"| {first} − {second} | " + " | ".join(cells) + " |")
    with open(os.path.join(out, "comparison.json"), "w") as f:
        json.dump(results, f, indent=1)
    print()
    print("PyTorch training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
