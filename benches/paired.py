#!/usr/bin/env python3
"""Our suite against its PyTorch anchors in alternating rounds, with the ratio's spread.

On a shared host one run of ours and one of the anchor, minutes apart, can differ by more
than the change being judged (the anchors of `docs/performance.md` moved by up to 40 %
between rounds minutes apart). This script runs each workload's criterion benchmark and its
anchor (`reference_*.py`) back to back for several rounds, the order swapped every round so
that a drift of the host favours neither, and reports the ratio of each round (ours ÷
anchor, samples per second, wall clock), their median and geometric mean, and a bootstrap
95 % interval of the geometric mean over the rounds:

    python3 benches/paired.py                        # the f32 suite, 5 rounds
    python3 benches/paired.py --workloads mae --rounds 8
    python3 benches/paired.py --precision bf16       # the steps under bf16 vs autocast
    python3 benches/paired.py --ours-dir /tmp/old    # saved bench binaries instead
    python3 benches/paired.py --workloads mae --baseline-dir /tmp/old   # a change, paired

Our benchmarks are built with `cargo bench --no-run` (release profile) unless `--ours-dir`
names a folder holding the bench executables by name (`embed_ecg`, `mae_step`, ...). With
`--baseline-dir` each round also runs a second build's executables, for judging a change by
the ratio of the two builds within the same rounds.
"""

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

BENCHES = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHES)


@dataclass(frozen=True)
class Workload:
    """One row of the suite: our criterion benchmark and the anchor that does the same work."""

    bench: str
    filter: str
    anchor: str
    anchor_args: tuple
    goal: float


# The suite at the paper's shapes and the goals of issue 19 (f32 against the reference code;
# bf16 against PyTorch's CPU autocast, on CPUs with AMX).
WORKLOADS = {
    "f32": {
        "ecg": Workload("embed_ecg", "global/cpu$", "reference_embed_ecg.py",
                        ("--iters", "5"), 2.0),
        "cmr": Workload("embed_cmr", "folded$", "reference_embed_cmr.py",
                        ("--iters", "5"), 1.5),
        "mae": Workload("mae_step", "mask0.8/cpu$", "reference_mae_step.py", (), 1.5),
        "mmcl": Workload("mmcl_step", "vit_tiny_b16/cpu$", "reference_mmcl_step.py",
                         ("--iters", "3"), 1.5),
    },
    "bf16": {
        "mae": Workload("mae_step", "mask0.8/cpu_bf16$", "reference_mae_step.py",
                        ("--precision", "bf16"), 1.2),
        "mmcl": Workload("mmcl_step", "vit_tiny_b16/cpu_bf16$", "reference_mmcl_step.py",
                         ("--iters", "3", "--precision", "bf16"), 1.2),
    },
}

UNITS = {"elem/s": 1.0, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}


def cpu_name():
    """`lscpu`'s model name with the family and model numbers (they tell Zen 3 from Zen 4)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU"
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}), {os.cpu_count()} CPUs")


def build(benches):
    """Builds the criterion benches and returns their executables by name."""
    cmd = ["cargo", "bench", "--no-run", "--message-format=json"]
    for b in sorted(benches):
        cmd += ["--bench", b]
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    found = {}
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        target = msg.get("target") or {}
        if msg.get("reason") == "compiler-artifact" and "bench" in target.get("kind", []) \
                and msg.get("executable"):
            found[target["name"]] = msg["executable"]
    missing = set(benches) - set(found)
    if missing:
        sys.exit(f"error: cargo built no executable for {sorted(missing)}")
    return found


def run_ours(exe, w):
    """Samples per second of our benchmark (criterion's middle throughput estimate; the
    benchmark sets its own measurement time)."""
    cmd = [exe, "--bench", "--warm-up-time", "2", w.filter]
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r"thrpt:\s*\[\s*\S+\s+\S+\s+(\S+)\s+(\S+)", p.stdout)
    if p.returncode != 0 or not m or m.group(2) not in UNITS:
        sys.exit(f"error: {os.path.basename(exe)} '{w.filter}' gave no throughput "
                 f"(exit {p.returncode}):\n{p.stdout[-2000:]}")
    return float(m.group(1)) * UNITS[m.group(2)]


def run_anchor(w, threads):
    """Samples per second of the PyTorch anchor (its `--json` record, wall clock)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        cmd = [sys.executable, os.path.join(BENCHES, w.anchor), "--threads", str(threads),
               *w.anchor_args, "--json", out.name]
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        records = [json.loads(line) for line in out.read().splitlines() if line.strip()]
    if p.returncode != 0 or not records:
        sys.exit(f"error: {w.anchor} failed (exit {p.returncode}):\n{p.stdout[-2000:]}")
    return records[-1]["samples_per_s"]


def geometric_mean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def bootstrap_interval(ratios, draws=10000, seed=19):
    """A 95 % percentile-bootstrap interval of the geometric mean over the rounds (seeded, so
    the same rounds give the same interval)."""
    rng = random.Random(seed)
    means = sorted(geometric_mean(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def summary(name, ratios, goal=None):
    """One markdown row: the rounds' ratios, their median, geometric mean and interval, and
    how many rounds reached `goal` (if any)."""
    lo, hi = bootstrap_interval(ratios)
    rounds = " / ".join(f"{r:.2f}" for r in ratios)
    target, met = (f"{goal}×", f"{sum(r >= goal for r in ratios)} of {len(ratios)}") if goal \
        else ("–", "–")
    return (f"| {name} | {rounds} | {statistics.median(ratios):.2f}× "
            f"| {geometric_mean(ratios):.2f}× [{lo:.2f}, {hi:.2f}] | {target} | {met} |")


def executables_in(folder, benches):
    """The bench executables saved in `folder`, by bench name (exits when one is missing)."""
    exes = {b: os.path.join(folder, b) for b in benches}
    absent = [e for e in exes.values() if not os.access(e, os.X_OK)]
    if absent:
        sys.exit(f"error: no executable at {absent}")
    return exes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=sorted(WORKLOADS), default="f32")
    ap.add_argument("--workloads", default=None,
                    help="comma-separated names (f32: ecg,cmr,mae,mmcl; bf16: mae,mmcl); "
                         "all by default")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2,
                    help="the anchor's threads (ours use rayon's default: RAYON_NUM_THREADS)")
    ap.add_argument("--ours-dir", help="a folder with saved bench executables, named by bench")
    ap.add_argument("--baseline-dir",
                    help="a folder with another build's bench executables: every round runs "
                         "them too, and the ratio of ours to them is reported beside")
    ap.add_argument("--json", metavar="FILE", help="also write every round's figures to FILE")
    args = ap.parse_args()
    table = WORKLOADS[args.precision]
    names = args.workloads.split(",") if args.workloads else list(table)
    unknown = [n for n in names if n not in table]
    if unknown or args.rounds < 1:
        sys.exit(f"error: unknown workloads {unknown} for {args.precision} (known: {list(table)})"
                 if unknown else "error: --rounds must be at least 1")
    benches = {table[n].bench for n in names}
    exes = executables_in(args.ours_dir, benches) if args.ours_dir else build(benches)
    baseline = executables_in(args.baseline_dir, benches) if args.baseline_dir else None
    print(f"{cpu_name()}; anchor threads {args.threads}; {args.rounds} rounds; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    records, rows = [], []
    for name in names:
        w = table[name]
        runs = {"ours": lambda: run_ours(exes[w.bench], w),
                "anchor": lambda: run_anchor(w, args.threads)}
        if baseline:
            runs["baseline"] = lambda: run_ours(baseline[w.bench], w)
        order = list(runs)
        ratios, against_baseline = [], []
        for r in range(args.rounds):
            # Each round starts with another of the programs, so that a drift of the host
            # favours none of them.
            k = r % len(order)
            figures = {what: runs[what]() for what in order[k:] + order[:k]}
            ratios.append(figures["ours"] / figures["anchor"])
            line = (f"{name} round {r + 1}: ours {figures['ours']:.2f}, anchor "
                    f"{figures['anchor']:.2f} samples/s, ratio {ratios[-1]:.2f}")
            if baseline:
                against_baseline.append(figures["ours"] / figures["baseline"])
                line += (f"; baseline {figures['baseline']:.2f}, ours ÷ baseline "
                         f"{against_baseline[-1]:.3f}")
            print(f"{line} ({time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f})",
                  flush=True)
            records.append({"workload": name, "precision": args.precision, "round": r + 1,
                            **{f"{what}_samples_per_s": v for what, v in figures.items()}})
        rows.append(summary(name, ratios, w.goal))
        if baseline:
            rows.append(summary(f"{name}, ours ÷ baseline", against_baseline))
    print("\n| workload | ratio per round (ours ÷ anchor) | median "
          "| geometric mean [95 % bootstrap] | goal | rounds at goal |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"cpu": cpu_name(), "rounds": records}, out, indent=1)


if __name__ == "__main__":
    main()
