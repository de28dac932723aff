#!/usr/bin/env python3
"""Rounds per second and bytes moved per round versus the rank count, same config, same run.

    python3 bench/multi_rank.py [--mmfl build/mmfl] [--config configs/cross_device.yaml]
                                [--ranks 1,2,3] [--rounds 6] [--threads 1] [--set KEY=VALUE ...]

Each rank count runs the config for --rounds rounds (evaluation only at the end) under
`mpirun --oversubscribe -n R` (R = 1 included, so every row pays the same launch; without mpirun,
as on a GPU machine that lacks it, only --ranks 1 runs, directly), every rank with
--threads intra-op threads. Reported per rank count: the median round's wall time (round 1
excluded: it warms the allocator), rounds/s, clients/s, and the bytes all ranks sent into
collectives per round (metrics.jsonl's comm_bytes). The final metrics must agree across rows
(they are printed); a rank count that changes them is a bug.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mmfl", default="build/mmfl")
    ap.add_argument("--config", default="configs/cross_device.yaml")
    ap.add_argument("--ranks", default="1,2,3")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    ranks = [int(x) for x in a.ranks.split(",")]
    have_mpirun = shutil.which("mpirun") is not None
    if not have_mpirun and ranks != [1]:
        sys.exit("multi_rank.py: no mpirun (apt install openmpi-bin); --ranks 1 runs without it")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    tmp = tempfile.mkdtemp(prefix="mmfl_multi_rank_")
    rows = []
    try:
        for r in ranks:
            out = os.path.join(tmp, f"r{r}")
            sets = [f"rounds={a.rounds}", f"eval.every={a.rounds}"] + a.set
            launch = ["mpirun", "--oversubscribe", "-n", str(r)] if have_mpirun else []
            cmd = launch + [a.mmfl, "run", a.config, "--out", out, "--quiet", "--device", a.device]
            for s in sets:
                cmd += ["--set", s]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"{r} ranks failed:\n{p.stdout}{p.stderr}")
            m = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
            walls = [x["wall_s"] for x in m[1:-1]] or [x["wall_s"] for x in m]
            wall = statistics.median(walls)
            rows.append({
                "ranks": r, "round_s": wall, "rounds_per_s": 1.0 / wall,
                "clients_per_s": m[0]["clients"] / wall,
                "comm_bytes_per_round": statistics.median([x.get("comm_bytes", 0) for x in m]),
                "final": {k: m[-1][k] for k in ("image_acc", "i2t_r1", "train_loss") if k in m[-1]},
            })
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.config}, {a.rounds} rounds, {a.threads} thread(s) per rank, device {a.device}")
    print(f"{'ranks':>5} {'round (s)':>10} {'rounds/s':>9} {'clients/s':>10} {'comm MB/round':>14}"
          f"  final metrics")
    base = rows[0]["round_s"]
    for x in rows:
        print(f"{x['ranks']:>5} {x['round_s']:>10.3f} {x['rounds_per_s']:>9.2f} "
              f"{x['clients_per_s']:>10.1f} {x['comm_bytes_per_round'] / 1e6:>14.2f}  "
              f"{json.dumps(x['final'])}  (speedup {base / x['round_s']:.2f}x)")
    finals = {json.dumps(x["final"], sort_keys=True) for x in rows}
    if len(finals) != 1:
        sys.exit("multi_rank.py: the final metrics differ across rank counts")


if __name__ == "__main__":
    main()
