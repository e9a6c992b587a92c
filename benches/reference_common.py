"""What the plain-PyTorch anchors of the benchmarks (`reference_*.py` beside this file) share:
timm 0.6.8's Vision Transformer pieces as the reference code runs them (exact GELU, LayerNorm
eps 1e-6, per-sample drop-path), their command line (`--threads`, `--iters`, `--batch`) and
their timing (wall-clock and process-CPU seconds per call).

The scripts import it by name: Python puts a script's own folder first on its module path, so
`python3 benches/reference_<name>.py` finds it from any working directory.
"""
import argparse
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class DropPath(nn.Module):
    """timm's stochastic depth: drops a sample's residual branch with probability `p` in
    training, scaling the kept ones by 1 / (1 - p)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """timm 0.6.8 multi-head self-attention (one fused qkv projection)."""

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


class Mlp(nn.Module):
    """timm's two-layer MLP with exact GELU; `fc1`/`fc2` are the reference's key names."""

    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block (LayerNorm eps 1e-6), drop-path `drop_path` on both
    residual branches."""

    def __init__(self, dim, heads, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def cpu_seconds():
    """User + system CPU seconds of this process (every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_args(iters, batch, extra=None):
    """Parses `--threads` (default 2), `--iters` and `--batch` (defaults given), `--device`
    (`cpu` or `cuda`), `--precision` (the script runs its forward pass under `autocast(args)`),
    `--json` and whatever `extra(parser)` adds; sets PyTorch's thread count."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the model and inputs on the first GPU, timed after "
                         "torch.cuda.synchronize()")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: run the forward under autocast (bf16 matrix products, "
                         "f32 weights and accumulation): torch.autocast(device, bfloat16)")
    ap.add_argument("--json", metavar="FILE",
                    help="also append the figures to FILE as one JSON object per line")
    ap.add_argument("--profile", type=int, metavar="ROWS", default=0,
                    help="after timing, run the iterations again under torch.profiler and "
                         "print its ROWS most expensive operators: time per iteration and "
                         "GFLOP/s per thread of the matrix products and convolutions (the "
                         "anchor's side of `MMCL_PRODUCT_CENSUS=1 cargo bench`)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def autocast(args):
    """The autocast context of `--precision` on `--device` (a no-op context for f32)."""
    import contextlib
    if args.precision == "bf16":
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize():
    """Waits for the GPU's queued work (nothing to wait for on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def per_call(f, iters):
    """Wall-clock and process-CPU seconds per call of `f`, averaged over `iters` calls (warm up
    before: the first call pays for allocation and kernel selection)."""
    synchronize()
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in range(iters):
        f()
    synchronize()
    return (time.perf_counter() - t0) / iters, (cpu_seconds() - c0) / iters


def print_throughput(args, wall, cpu, unit, workload):
    """One line: seconds per `unit` and samples per second, by the wall clock and by CPU time
    per thread (on a shared machine the latter approximates an idle one's wall time); with
    `--json`, the same figures appended to that file as one JSON object named `workload`."""
    print(
        f"torch {torch.__version__}, {args.device}, {args.threads} threads, {args.precision}: "
        f"wall {wall:.3f} s/{unit} ({args.batch / wall:.1f} samples/s), cpu {cpu:.3f} s/{unit} "
        f"({args.batch / (cpu / args.threads):.1f} samples/s at {args.threads} idle threads)"
    )
    if args.json:
        import json
        with open(args.json, "a") as out:
            out.write(json.dumps({
                "workload": workload, "device": args.device, "precision": args.precision,
                "batch": args.batch, "threads": args.threads, "iters": args.iters,
                "torch": torch.__version__, "seconds_per_iteration": wall,
                "samples_per_s": args.batch / wall,
            }) + "\n")


def warm_up_and_time(args, f, unit, workload):
    """Calls `f` once to warm up, then times `args.iters` calls of it (`per_call`) and prints
    the figures per `unit` as `workload` (`print_throughput`)."""
    f()
    wall, cpu = per_call(f, args.iters)
    print_throughput(args, wall, cpu, unit, workload)
    if getattr(args, "profile", 0):
        print_profile(args, f, unit)


def print_profile(args, f, unit):
    """Runs `args.iters` calls of `f` under torch.profiler and prints the `args.profile`
    operators with the most self time: ms per `unit`, share, and for those whose FLOPs the
    profiler counts (matrix products, convolutions) GFLOP/s per thread of self time."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(args.iters):
            f()
        synchronize()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n| operator | ms per {unit} | share | calls per {unit} | GFLOP/s per thread |")
    print("|---|---:|---:|---:|---:|")
    for e in events[:args.profile]:
        seconds = e.self_cpu_time_total / 1e6
        rate = (f"{e.flops / seconds / args.threads / 1e9:.1f}"
                if e.flops and seconds > 0 else "")
        print(f"| {e.key} | {1e3 * seconds / args.iters:.1f} | "
              f"{100 * e.self_cpu_time_total / total:.1f} % | {e.count / args.iters:g} | {rate} |")
