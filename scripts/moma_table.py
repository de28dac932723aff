#!/usr/bin/env python3
"""The README's MoMa table: configs/moma.yaml with four FFN variants at equal active parameters
per token (every expert has moe.ffn hidden units and each token is processed by one expert per
layer): one dense FFN shared by both modalities, one dense FFN per modality, MoMa expert choice
(4 image + 4 text experts) and token choice top-1 with the Switch balancing loss. Same budget
for every row (rounds, cohort, data, seed). Runs `mmfl run` per row into OUT/<row> (a row whose
report.json exists is reused), then prints a markdown table of the last evaluation, the expert
load balance (max/mean tokens per expert, averaged over rounds and layers; 1 = balanced) and
the median wall time per round.

usage: scripts/moma_table.py [--mmfl build/mmfl] [--out runs/moma_table] [--set KEY=VALUE ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

DENSE = ["moe.image.routing=dense", "moe.image.experts=1", "moe.text.routing=dense",
         "moe.text.experts=1"]
ROWS = [
    ("shared dense FFN", ["moe.ffn_kind=shared"] + DENSE),
    ("dense FFN per modality", DENSE),
    ("MoMa expert choice, 4+4", ["moe.image.routing=expert_choice",
                                 "moe.text.routing=expert_choice"]),
    ("token choice top-1, 4+4", ["moe.image.routing=token_choice",
                                 "moe.text.routing=token_choice"]),
]


def balance(m, group):
    vals = [r[f"moe_max_mean_{group}"] for r in m if f"moe_max_mean_{group}" in r]
    return sum(vals) / len(vals) if vals else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmfl", default="build/mmfl")
    ap.add_argument("--config", default="configs/moma.yaml")
    ap.add_argument("--out", default="runs/moma_table")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    lines = ["| FFN | params (active/token) | img acc | txt acc | i2t R@1/5/10 | t2i R@1/5/10 | "
             "load max/mean img, txt | s/round |",
             "|---|---|---|---|---|---|---|---|"]
    for i, (name, sets) in enumerate(ROWS):
        out = os.path.join(a.out, f"row{i}")
        if not os.path.exists(os.path.join(out, "report.json")):
            cmd = [a.mmfl, "run", a.config, "--out", out, "--quiet"]
            for s in sets + a.set:
                cmd += ["--set", s]
            print("running:", " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
        m = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        rep = json.load(open(os.path.join(out, "report.json")))
        desc = rep.get("model", {})
        ev = [r for r in m if "text_acc" in r][-1]
        # The median round: the machine is shared, and a few rounds stalled by other work
        # would dominate a mean.
        wall = statistics.median(r["wall_s"] for r in m)
        pct = lambda k: f"{100 * ev[k]:.1f}"
        if i == 0:
            bal = f"{balance(m, 'shared'):.2f} (one FFN)"
        else:
            bal = f"{balance(m, 'image'):.2f}, {balance(m, 'text'):.2f}"
        params = f"{desc.get('params', '?')} ({desc.get('active_params_per_token', '?')})"
        lines.append(
            f"| {name} | {params} | {pct('image_acc')} | {pct('text_acc')} | "
            f"{pct('i2t_r1')}/{pct('i2t_r5')}/{pct('i2t_r10')} | "
            f"{pct('t2i_r1')}/{pct('t2i_r5')}/{pct('t2i_r10')} | {bal} | {wall:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
