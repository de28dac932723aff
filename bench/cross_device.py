#!/usr/bin/env python3
"""The cross-device FL benchmark (configs/cross_device.yaml): mmfl with each executor beside a
plain-PyTorch simulator of the same setup, measured in the same run on the same machine.

The baseline is what a user would write by hand: one resident model, the sampled clients
trained in place one after another (load the global weights, SGD over the client's batches,
accumulate the weighted average), evaluation every 10 rounds. Reported per row: training
rounds/s (rounds without evaluation), peak resident memory, and the wall time until test
accuracy first reaches the target (evaluation time included).

  .venv/bin/python bench/cross_device.py [--rounds 40] [--executors sequential,parallel,batched]
                                         [--torch-threads 2,1] [--device cpu|cuda] [--json FILE]
  GPU: python3 bench/cross_device.py --device cuda --executors sequential,batched --torch-threads 16
"""
import argparse
import gzip
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cross_device.yaml")


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def torch_simulator(args, threads, device="cpu"):
    """Plain PyTorch: 1,000 IID clients of 50 images, 50 per round, batch 10, 1 epoch, SGD 0.05."""
    import resource
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    root = args.data_root
    dims, raw = read_idx(os.path.join(root, "train-images-idx3-ubyte.gz"))
    images = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 1, 28, 28).float() / 255
    _, raw = read_idx(os.path.join(root, "train-labels-idx1-ubyte.gz"))
    labels = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    _, raw = read_idx(os.path.join(root, "t10k-images-idx3-ubyte.gz"))
    test_x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 1, 28, 28).float() / 255
    _, raw = read_idx(os.path.join(root, "t10k-labels-idx1-ubyte.gz"))
    test_y = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    mean, std = images.mean(), images.std()
    images, test_x = ((images - mean) / std).to(device), ((test_x - mean) / std).to(device)
    labels, test_y = labels.to(device), test_y.to(device)

    rng = random.Random(1)
    perm = list(range(images.shape[0]))
    rng.shuffle(perm)
    clients = [perm[i * 50:(i + 1) * 50] for i in range(1000)]

    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.Linear(512, 10)).to(device)
    global_w = [p.detach().clone() for p in model.parameters()]
    times, accs = [], {}
    for r in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        cohort = rng.sample(range(1000), 50)
        acc = [torch.zeros_like(w) for w in global_w]
        for c in cohort:
            with torch.no_grad():
                for p, w in zip(model.parameters(), global_w):
                    p.copy_(w)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            idx = clients[c][:]
            rng.shuffle(idx)
            for b in range(0, len(idx), 10):
                rows = torch.tensor(idx[b:b + 10], device=device)
                loss = F.cross_entropy(model(images[rows]), labels[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                for a, p in zip(acc, model.parameters()):
                    a.add_(p, alpha=1 / 50)
        global_w = acc
        evaluated = r % 10 == 0
        if evaluated:
            with torch.no_grad():
                for p, w in zip(model.parameters(), global_w):
                    p.copy_(w)
                correct = sum(int((model(test_x[i:i + 1000]).argmax(1) == test_y[i:i + 1000]).sum())
                              for i in range(0, 10000, 1000))
            accs[r] = correct / 10000
        times.append((time.perf_counter() - t0, evaluated))
    if device == "cuda":
        torch.cuda.synchronize()
        peak_kb = torch.cuda.max_memory_allocated() // 1024
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return summarize(f"plain PyTorch ({device}), {threads} intra-op thread(s)", times, accs,
                     peak_kb, args)


def summarize(name, times, accs, peak_kb, args):
    train = [t for t, ev in times if not ev]
    row = {"name": name, "rounds": len(times),
           "rounds_per_s": len(train) / sum(train) if train else float("nan"),
           "peak_mb": peak_kb / 1024, "final_acc": accs[max(accs)] if accs else None,
           "time_to_target_s": None}
    elapsed = 0.0
    for r, (t, _) in enumerate(times, start=1):
        elapsed += t
        if r in accs and accs[r] >= args.target:
            row["time_to_target_s"] = elapsed
            break
    return row


def run_mmfl(args, executor):
    out = tempfile.mkdtemp(prefix=f"mmfl_xdev_{executor}_")
    shutil.rmtree(out)
    cmd = [args.mmfl, "run", CONFIG, "--out", out, "--device", args.device, "--quiet",
           "--set", f"rounds={args.rounds}", "--set", f"executor.kind={executor}",
           "--set", f"data.root={args.data_root}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    if status != 0:
        sys.exit(f"cross_device: {' '.join(cmd)} failed:\n{err}")
    times, accs = [], {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            times.append((m["wall_s"], "image_acc" in m))
            if "image_acc" in m:
                accs[m["round"]] = m["image_acc"]
    shutil.rmtree(out, ignore_errors=True)
    # Peak host memory of the process (on a GPU, device memory is not included).
    return summarize(f"mmfl {executor} ({args.device})", times, accs, usage.ru_maxrss, args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--executors", default="sequential,parallel,batched")
    ap.add_argument("--torch-threads", default="2,1", help="plain-PyTorch rows, comma-separated")
    ap.add_argument("--target", type=float, default=0.70, help="test accuracy for time-to-target")
    ap.add_argument("--mmfl", default=os.path.join(ROOT, "build", "mmfl"))
    ap.add_argument("--data-root", default=os.environ.get("MMFL_DATA_ROOT",
                                                          "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where mmfl trains (the PyTorch rows run on the same device)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    if not os.path.exists(args.mmfl):
        sys.exit(f"cross_device: {args.mmfl} not found; build first (make build)")

    rows = []
    for t in [int(x) for x in args.torch_threads.split(",") if x]:
        # A child process per row: peak memory and thread settings of one row only.
        r = subprocess.run([sys.executable, __file__, "--_torch-row", str(t), "--rounds",
                            str(args.rounds), "--target", str(args.target), "--data-root",
                            args.data_root, "--device", args.device], capture_output=True,
                           text=True)
        if r.returncode != 0:
            sys.exit(f"cross_device: the PyTorch simulator failed:\n{r.stderr}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"  done: {rows[-1]['name']}", file=sys.stderr)
    for e in [x for x in args.executors.split(",") if x]:
        rows.append(run_mmfl(args, e))
        print(f"  done: {rows[-1]['name']}", file=sys.stderr)

    base = rows[0]["rounds_per_s"] if rows else float("nan")
    print(f"cross-device FedAvg, {args.rounds} rounds, target accuracy {args.target:.0%} "
          f"(rounds/s without evaluation; ratio to the first row)\n")
    print("| run | rounds/s | x first row | peak MB | time to target | final acc |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ttt = f"{r['time_to_target_s']:.1f} s" if r["time_to_target_s"] else "not reached"
        acc = f"{100 * r['final_acc']:.1f}%" if r["final_acc"] is not None else "-"
        print(f"| {r['name']} | {r['rounds_per_s']:.3f} | {r['rounds_per_s'] / base:.2f} | "
              f"{r['peak_mb']:.0f} | {ttt} | {acc} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_torch-row":
        threads = int(sys.argv[2])
        ap = argparse.ArgumentParser()
        ap.add_argument("--rounds", type=int)
        ap.add_argument("--target", type=float)
        ap.add_argument("--data-root")
        ap.add_argument("--device", default="cpu")
        a = ap.parse_args(sys.argv[3:])
        print(json.dumps(torch_simulator(a, threads, a.device)))
    else:
        main()
