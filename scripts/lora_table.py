#!/usr/bin/env python3
"""The README's federated LoRA table: configs/lora.yaml under every rule and sparsity setting,
same budget for every row (rounds, cohort, data). Runs `mmfl run` per row into OUT/<row>, then
prints a markdown table of the last evaluation and the total bytes moved.

usage: scripts/lora_table.py [--mmfl build/mmfl] [--out runs/lora_table] [--set KEY=VALUE ...]
"""
import argparse
import json
import os
import subprocess
import sys

ROWS = [
    ("frozen base, projection only", ["lora.rule=none"]),
    ("dense, fedavg", ["lora.rule=fedavg"]),
    ("dense, ffa", ["lora.rule=ffa"]),
    ("dense, fedsa", ["lora.rule=fedsa"]),
    ("dense, stack", ["lora.rule=stack"]),
    ("dense, product", ["lora.rule=product"]),
]
for density in ("0.1", "0.01"):
    for ef in ("true", "false"):
        ROWS.append((f"ffa, top-{float(density):.0%} up+down, EF {'on' if ef == 'true' else 'off'}",
                     ["lora.rule=ffa", f"lora.upload_density={density}",
                      f"lora.download_density={density}", f"lora.error_feedback={ef}"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmfl", default="build/mmfl")
    ap.add_argument("--config", default="configs/lora.yaml")
    ap.add_argument("--out", default="runs/lora_table")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    lines = ["| setting | img acc | txt acc | i2t R@1/5/10 | t2i R@1/5/10 | adapter MB up | "
             "adapter MB down | total MB up | total MB down | s/round |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, (name, sets) in enumerate(ROWS):
        out = os.path.join(a.out, f"row{i:02d}")
        if not os.path.exists(os.path.join(out, "report.json")):
            cmd = [a.mmfl, "run", a.config, "--out", out, "--quiet"]
            for s in sets + a.set:
                cmd += ["--set", s]
            print("running:", " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
        m = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        ev = [r for r in m if "text_acc" in r][-1]
        tot = lambda k: sum(r.get(k, 0) for r in m) / 1e6
        wall = sum(r["wall_s"] for r in m) / len(m)
        pct = lambda k: f"{100 * ev[k]:.1f}"
        lines.append(
            f"| {name} | {pct('image_acc')} | {pct('text_acc')} | "
            f"{pct('i2t_r1')}/{pct('i2t_r5')}/{pct('i2t_r10')} | "
            f"{pct('t2i_r1')}/{pct('t2i_r5')}/{pct('t2i_r10')} | "
            f"{tot('adapter_bytes_up'):.2f} | {tot('adapter_bytes_down'):.2f} | "
            f"{tot('bytes_up'):.1f} | {tot('bytes_down'):.1f} | {wall:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
