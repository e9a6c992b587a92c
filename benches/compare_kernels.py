#!/usr/bin/env python3
"""Joins the output of `cargo bench --bench kernels` and of `reference_kernels.py`
into a Markdown table with the ratio PyTorch time / our time (> 1: we are faster).

    python3 benches/compare_kernels.py OURS.log ANCHOR.log [--anchor-column cpu]

`--anchor-column wall` (default) compares with the anchor's wall-clock median, `cpu` with its
CPU time per thread (use it with `MMCL_BENCH_CLOCK=cpu` runs of ours).
"""
import argparse
import re

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def criterion_medians(text):
    """Benchmark id → median ms from criterion's console output (id and `time:` may be on one
    line or two)."""
    out = {}
    pattern = re.compile(
        r"^(\S+/\S+)\s*\n?\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", re.MULTILINE)
    for m in pattern.finditer(text):
        out[m.group(1)] = float(m.group(2)) * UNITS[m.group(3)]
    return out


def anchor_times(text, column):
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and "/" in parts[0]:
            try:
                out[parts[0]] = float(parts[1] if column == "wall" else parts[2])
            except ValueError:
                pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("anchor")
    ap.add_argument("--anchor-column", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    ours = criterion_medians(open(args.ours, encoding="utf-8").read())
    anchor = anchor_times(open(args.anchor, encoding="utf-8").read(), args.anchor_column)
    print("| kernel | ours (ms) | PyTorch (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for name, t in ours.items():
        ref = anchor.get(name)
        ratio = f"{ref / t:.2f}×" if ref else "–"
        ref_s = f"{ref:.1f}" if ref else "–"
        print(f"| `{name}` | {t:.1f} | {ref_s} | {ratio} |")


if __name__ == "__main__":
    main()
