#!/usr/bin/env python3
"""Merges what scripts/gpu-check.sh measured into one JSON (OUT_DIR/gpu-check.json) and prints
a table: the test executables' results on the GPU (parity, NCCL), our throughput over
PyTorch's for each workload, precision and batch, the agreement with the CPU, the default
reproduction's time, and the paper-scale estimate (hours for the
paper's stages over ~40 000 subjects at the measured batch-256 throughput).

    python3 scripts/gpu_check_report.py OUT_DIR
"""
import json
import os
import sys

# The paper's scale: its stages' epochs over about 40 000 subjects (UK Biobank).
PAPER_SUBJECTS = 40_000
PAPER_EPOCHS = {"mae_step": 400, "mmcl_step": 300}


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_lines(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
    except (OSError, ValueError):
        pass
    return rows


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    ours = load_json(os.path.join(out, "rust.json")) or {}
    torch_rows = load_lines(os.path.join(out, "torch.jsonl"))
    reproduce = load_json(os.path.join(out, "reproduce.json"))
    tests = load_json(os.path.join(out, "tests.json")) or []
    gpu = None
    try:
        with open(os.path.join(out, "gpu.txt")) as f:
            gpu = f.read().strip()
    except OSError:
        pass

    reference = {(r["workload"], r["precision"], r["batch"]): r for r in torch_rows}
    comparisons = []
    for row in ours.get("throughput", []):
        key = (row["workload"], row["precision"], row["batch"])
        theirs = reference.get(key)
        entry = {
            "workload": key[0], "precision": key[1], "batch": key[2],
            "ours_samples_per_s": row.get("samples_per_s"),
            "pytorch_samples_per_s": theirs and theirs["samples_per_s"],
            "ours_error": row.get("error"),
        }
        if entry["ours_samples_per_s"] and entry["pytorch_samples_per_s"]:
            entry["ratio"] = entry["ours_samples_per_s"] / entry["pytorch_samples_per_s"]
        comparisons.append(entry)

    paper_scale = []
    for workload, epochs in PAPER_EPOCHS.items():
        for precision in ("f32", "bf16"):
            row = next((r for r in ours.get("throughput", [])
                        if r["workload"] == workload and r["precision"] == precision
                        and r["batch"] == 256 and r.get("samples_per_s")), None)
            if row:
                per_epoch = PAPER_SUBJECTS / row["samples_per_s"]
                paper_scale.append({
                    "workload": workload, "precision": precision, "batch": 256,
                    "subjects": PAPER_SUBJECTS, "epochs": epochs,
                    "epochs_per_hour": 3600.0 / per_epoch,
                    "hours_for_all_epochs": epochs * per_epoch / 3600.0,
                })

    figures = {
        "gpu": gpu,
        "tests": tests,
        "agreement": ours.get("agreement", []),
        "agreement_pass": ours.get("agreement_pass"),
        "ours_complete": ours.get("complete"),
        "throughput": comparisons,
        "pytorch": torch_rows,
        "reproduce_default": reproduce,
        "paper_scale": paper_scale,
    }
    with open(os.path.join(out, "gpu-check.json"), "w") as f:
        json.dump(figures, f, indent=2)

    print(f"GPU: {gpu}")
    for t in tests:
        counts = (f"{t['passed']} passed, {t['failed']} failed, {t['ignored']} ignored"
                  if "passed" in t else "no test result")
        print(f"tests {t['test']:<18} exit {t.get('exit_status', '-')}: {counts}")
        for n in t["notes"]:
            print(f"    {n}")
    for a in figures["agreement"]:
        print(f"agreement {a['workload']:<10} {a['arithmetic']:<9} "
              f"{a['relative_difference']:.1e} (tolerance {a['tolerance']:.0e}; per output "
              f"{' '.join(f'{d:.1e}' for d in a.get('per_output', []))}) "
              f"{'ok' if a['pass'] else 'FAILED'}")
    print(f"{'workload':<10} {'prec':<5} {'batch':>5} {'ours/s':>10} {'torch/s':>10} {'ratio':>7}")
    for c in comparisons:
        fmt = lambda v: f"{v:10.1f}" if v else f"{'-':>10}"
        ratio = f"{c['ratio']:6.2f}x" if c.get("ratio") else f"{'-':>7}"
        print(f"{c['workload']:<10} {c['precision']:<5} {c['batch']:>5} "
              f"{fmt(c['ours_samples_per_s'])} {fmt(c['pytorch_samples_per_s'])} {ratio}")
    if reproduce:
        print(f"mmcl reproduce --device cuda: {reproduce['seconds']:.0f} s "
              f"(exit status {reproduce['exit_status']}; goal under 120 s)")
    for p in paper_scale:
        print(f"paper scale {p['workload']:<10} {p['precision']:<5} "
              f"{p['epochs_per_hour']:.1f} epochs/h over {p['subjects']} subjects, "
              f"{p['hours_for_all_epochs']:.1f} h for {p['epochs']} epochs")
    ok = ours.get("agreement_pass") is not False and bool(comparisons)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
