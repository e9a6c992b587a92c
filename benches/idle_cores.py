#!/usr/bin/env python3
"""Where a multi-threaded run leaves cores idle: reads a system-wide `perf` profile and reports
the share of the run during which fewer than all CPUs ran the benchmark, what the other CPUs
did meanwhile (idle, or another process), and what the benchmark's busy threads were running
then (their innermost frame and their innermost frame in this project's code).

    perf record -a -g -F 997 -e cpu-clock -o run.perf \\
        target/release/deps/mae_step-HASH --bench 'mae_vit_tiny_patchX_b32_mask0.8/cpu$' \\
        --profile-time 15
    python3 benches/idle_cores.py run.perf --window 11 [--rows 30]

Every CPU is sampled at the same rate; the samples are grouped into slots of one sampling
period, and a slot counts as busy when the benchmark ran on at least one CPU. `--window S`
keeps the last S seconds before the benchmark's last sample (less 0.7 s of teardown), which
excludes the model's set-up when criterion's `--profile-time` is longer than S. Call stacks
come from frame pointers: build the benchmark with `RUSTFLAGS="-C force-frame-pointers=yes"`
(into a separate target directory) for frames through the project's code; without them the
innermost frames are still right.
"""
import argparse
import collections
import re
import subprocess
import sys

HEADER = re.compile(r"\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):")
PROJECT_FRAME = re.compile(r"mmcl_\w+::|candle_core::(tensor|backprop)")


def samples(path):
    """(time, cpu, command, thread, frames innermost first) of every sample."""
    text = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,tid,cpu,time,ip,sym"],
        capture_output=True, text=True, check=True).stdout
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        head = HEADER.match(lines[0]) if lines and lines[0].strip() else None
        if not head:
            continue
        frames = [re.sub(r"^\s*[0-9a-f]+\s+", "", l).strip() for l in lines[1:]]
        yield float(head.group(4)), int(head.group(3)), head.group(1), int(head.group(2)), frames


def where(frames):
    """The innermost frame, and the innermost frame of this project's code (or candle's
    tensor and autograd code) that is not the product entry point itself."""
    leaf = frames[0].split("(")[0] if frames else "?"
    ours = [f.split("(")[0] for f in frames
            if PROJECT_FRAME.search(f) and "gemm_raw" not in f and "census" not in f]
    return leaf[:60], " < ".join(f[:70] for f in ours[:3]) or "(no project frame)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile", help="perf.data of a system-wide (-a) cpu-clock recording")
    ap.add_argument("--window", type=float, default=11.0,
                    help="seconds kept before the benchmark's last sample (default 11)")
    ap.add_argument("--rate", type=float, default=997.0, help="the recording's -F (default 997)")
    ap.add_argument("--command", default=None,
                    help="the benchmark's command name (default: the most sampled one)")
    ap.add_argument("--rows", type=int, default=25, help="rows of the table (default 25)")
    args = ap.parse_args()

    rows = list(samples(args.profile))
    if not rows:
        sys.exit(f"{args.profile}: no samples")
    command = args.command or collections.Counter(r[2] for r in rows).most_common(1)[0][0]
    cpus = sorted({r[1] for r in rows})
    end = max(r[0] for r in rows if r[2] == command) - 0.7
    start = end - args.window
    slots = collections.defaultdict(dict)
    for t, cpu, comm, tid, frames in rows:
        if start < t < end:
            slots[int(t * args.rate)][cpu] = (comm, tid, frames)

    busy = 0
    running = collections.Counter()  # CPUs running the benchmark, per busy slot
    others = collections.Counter()   # what the other CPUs did in slots without all of them
    lone = collections.Counter()     # (thread, innermost, project frames) in those slots
    for slot in slots.values():
        ours = [s for s in slot.values() if s[0] == command]
        if not ours:
            continue
        busy += 1
        running[len(ours)] += 1
        if len(ours) == len(cpus):
            continue
        for cpu in cpus:
            s = slot.get(cpu)
            if s is None or s[0] != command:
                others["idle" if s is None or s[0] == "swapper" else f"other: {s[0]}"] += 1
        for comm, tid, frames in ours:
            lone[(tid,) + where(frames)] += 1
    if not busy:
        sys.exit(f"{args.profile}: no samples of {command} in the window")

    print(f"{command}: {busy} busy slots of {1e3 / args.rate:.2f} ms over {len(cpus)} CPUs "
          f"({args.window:g} s window)")
    for n in sorted(running, reverse=True):
        print(f"  {n} of {len(cpus)} CPUs running it: {100 * running[n] / busy:5.1f} %")
    print("  the other CPUs then: " + ", ".join(
        f"{k} {v}" for k, v in others.most_common(4)))
    print(f"\n| share of busy slots | thread | innermost frame | project frames |")
    print("|---:|---:|---|---|")
    for (tid, leaf, frames), n in lone.most_common(args.rows):
        print(f"| {100 * n / busy:.2f} % | {tid} | `{leaf}` | {frames} |")


if __name__ == "__main__":
    main()
