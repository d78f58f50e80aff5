"""Throughput of scalekit's distributed fit against plain baselines, in one run.

    python bench/bench_training.py            # the full workload (a few minutes)
    python bench/bench_training.py --quick    # a smoke run (20k samples, 1 epoch)
    python bench/bench_training.py --device cuda   # on a GPU machine (make test-gpu)

Every configuration trains the same model on the same data for the same epochs with the
same seed and global batch, and the script prints samples/s, the per-fit overhead and
the final test accuracy of each, then ratios between configurations measured in this
same run (absolute numbers depend on the machine and its load; ratios travel better).
See bench/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
N_FEATURES = 64
N_CLASSES = 10
N_TEST = 10_000


# -- the workload (ddp_reference.py imports these, so both sides train the same) -------


class Student(nn.Module):
    """MLP 64 -> 512 -> 512 -> 10 (301k parameters); outputs logits."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Linear(N_FEATURES, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, N_CLASSES),
        )

    def forward(self, X):
        return self.seq(X)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``n`` training and ``N_TEST`` test samples: Gaussian inputs labelled by a fixed
    random teacher network (so there is something to learn, and accuracy means it)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((N_FEATURES, 64)) / np.sqrt(N_FEATURES)
    w2 = rng.standard_normal((64, N_CLASSES)) / np.sqrt(64)

    def sample(m: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        X = np.random.default_rng([seed, stream]).standard_normal((m, N_FEATURES))
        y = np.argmax(np.tanh(X @ w1) @ w2, axis=1)
        return X.astype(np.float32), y.astype(np.int64)

    X_train, y_train = sample(n, 1)
    X_test, y_test = sample(N_TEST, 2)  # independent of n
    return X_train, y_train, X_test, y_test


@dataclass(frozen=True)
class Workload:
    n: int
    epochs: int
    batch_size: int
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    hidden: int = 512
    device: str = "cpu"


def skorch_net(w: Workload, max_epochs: int | None = None):
    from skorch import NeuralNetClassifier

    torch.manual_seed(w.seed)  # the same initial weights in every configuration
    return NeuralNetClassifier(
        Student, module__hidden=w.hidden, criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD, lr=w.lr, optimizer__momentum=w.momentum,
        batch_size=w.batch_size, max_epochs=w.epochs if max_epochs is None else max_epochs,
        iterator_train__shuffle=True, train_split=None, verbose=0, device=w.device,
    )


# -- measurements ----------------------------------------------------------------------


@dataclass
class Result:
    name: str
    batch_size: int
    samples_per_s: float  # trained samples / fit wall time (overhead included)
    wall_s: float
    overhead_s: float  # wall time not spent in epochs (set-up, shipping, returning state)
    accuracy: float
    note: str = ""
    extra: dict = field(default_factory=dict)


def accuracy_of(net_or_module, X_test, y_test) -> float:
    with torch.no_grad():
        if isinstance(net_or_module, nn.Module):
            pred = net_or_module(torch.from_numpy(X_test)).argmax(1).numpy()
        else:
            pred = net_or_module.predict(X_test)
    return float(np.mean(pred == y_test))


def epoch_seconds(net) -> float:
    return float(sum(net.history[:, "dur"]))


def best(results: list[Result]) -> Result:
    """The fastest of repeated measurements (noise on a shared machine only slows)."""
    chosen = max(results, key=lambda r: r.samples_per_s)
    if len(results) > 1:
        _add_note(chosen, f"best of {len(results)}")
    return chosen


def run_plain(name: str, w: Workload, data, threads: int, repeats: int = 1) -> Result:
    """skorch's own ``net.fit`` in this process."""
    X, y, X_test, y_test = data
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    runs = []
    try:
        skorch_net(w, max_epochs=1).fit(X[:2048], y[:2048])  # warm-up (imports, allocator)
        for _ in range(repeats):
            net = skorch_net(w)
            started = time.perf_counter()
            net.fit(X, y)
            wall = time.perf_counter() - started
            runs.append(Result(name, w.batch_size, w.n * w.epochs / wall, wall,
                               wall - epoch_seconds(net), accuracy_of(net, X_test, y_test)))
    finally:
        torch.set_num_threads(previous)
    return best(runs)


def run_scalekit(name: str, session, w: Workload, data, repeats: int = 1,
                 **fit_options) -> Result:
    """``sk.fit`` on the session's workers (cluster start-up excluded, per-fit overhead
    included)."""
    import scalekit as sk

    X, y, X_test, y_test = data
    # warm-up fit: a fresh worker imports torch, DDP and torch._dynamo on first use
    sk.fit(skorch_net(w, max_epochs=1), X[:2048], y[:2048], cluster=session, show=False,
           seed=w.seed, **fit_options)
    runs = []
    for _ in range(repeats):
        net = skorch_net(w)
        started = time.perf_counter()
        run = sk.fit(net, X, y, cluster=session, show=False, seed=w.seed, **fit_options)
        wall = time.perf_counter() - started
        transport = run.report.transport[0] if run.report.world_size > 1 else ""
        runs.append(Result(name, w.batch_size, w.n * w.epochs / wall, wall,
                           wall - epoch_seconds(net), accuracy_of(net, X_test, y_test),
                           note=f"averaged through {transport}" if transport else ""))
    return best(runs)


def torchrun_path() -> str:
    found = Path(sys.executable).parent / "torchrun"
    if not found.exists():
        raise SystemExit(f"torchrun not found next to {sys.executable}; install torch there")
    return str(found)


def run_torchrun(name: str, w: Workload, nproc: int, threads: int, repeats: int = 1
                 ) -> Result:
    """``torchrun --nproc_per_node=nproc bench/ddp_reference.py`` (DDP + gloo)."""
    return best([_torchrun_once(name, w, nproc, threads) for _ in range(repeats)])


def _torchrun_once(name: str, w: Workload, nproc: int, threads: int) -> Result:
    """One torchrun launch; on ``w.device == "cuda"`` one GPU per process over NCCL."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
        cmd = [
            torchrun_path(), "--nnodes=1", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
            str(HERE / "ddp_reference.py"),
            "--samples", str(w.n), "--epochs", str(w.epochs), "--batch-size", str(w.batch_size),
            "--lr", str(w.lr), "--momentum", str(w.momentum), "--seed", str(w.seed),
            "--threads", str(threads), "--out", str(out),
            "--device", w.device, "--hidden", str(w.hidden),
        ]
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        launch = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        r = json.loads(out.read_text())
    return Result(name, w.batch_size, w.n * w.epochs / r["wall_s"], r["wall_s"],
                  r["wall_s"] - r["epoch_s"], r["accuracy"],
                  note=f"process launch + imports + data: {launch - r['wall_s']:.1f}s excluded")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the run ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20k samples, 1 epoch")
    parser.add_argument("--n", type=int, help="training samples (default 200000)")
    parser.add_argument("--epochs", type=int, help="epochs (default 2)")
    parser.add_argument("--batch-sizes", default="256",
                        help="comma-separated global batch sizes, e.g. 256,1024")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each configuration this often and keep the fastest")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: the GPU suite (MLP 64-2048-2048-10, batch 1024)")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        from bench_gpu import main as gpu_main

        return gpu_main(args)

    n = args.n or (20_000 if args.quick else 200_000)
    epochs = args.epochs or (1 if args.quick else 2)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    started = time.perf_counter()
    data = make_data(n, args.seed)
    print(f"workload: MLP 64-512-512-10 on {n} x 64 float32 (teacher labels), {epochs} "
          f"epoch(s), SGD lr 0.05 momentum 0.9, seed {args.seed}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    import dask.config

    import scalekit as sk

    # scalekit checkpoints every epoch (part of its per-fit overhead); keep them out of
    # the shared temp folder
    checkpoints = tempfile.TemporaryDirectory(prefix="bench-checkpoints-")
    dask.config.set({"scalekit.checkpoint.root": checkpoints.name})
    results: list[Result] = []
    r = max(1, args.repeats)
    for bs in batch_sizes:
        w = Workload(n=n, epochs=epochs, batch_size=bs, seed=args.seed)
        print(f"\n-- global batch {bs}", flush=True)
        results.append(run_plain("skorch net.fit, 1 process x 1 thread", w, data, 1, r))
        _progress(results[-1])
        results.append(run_plain("skorch net.fit, 1 process x 2 threads", w, data, 2, r))
        _progress(results[-1])

        t = time.perf_counter()
        session = sk.cluster(workers=1, threads_per_worker=1)
        try:
            session.wait_for_workers(1)
            startup1 = time.perf_counter() - t
            results.append(run_scalekit("scalekit, 1 worker x 1 thread", session, w, data, r))
            _add_note(results[-1], f"cluster start-up {startup1:.1f}s excluded")
            _progress(results[-1])
            t = time.perf_counter()
            session.scale(2)
            session.wait_for_workers(2)
            startup2 = time.perf_counter() - t
            results.append(run_scalekit("scalekit, 2 workers x 1 thread", session, w, data, r))
            _add_note(results[-1], f"scale-up {startup2:.1f}s excluded")
            _progress(results[-1])
            # the same with gloo's all-reduce, as torchrun uses (and as across hosts)
            with dask.config.set({"scalekit.training.host-reduce": False}):
                results.append(run_scalekit(GLOO_2X1, session, w, data, r))
            _progress(results[-1])
        finally:
            session.close()

        t = time.perf_counter()
        session = sk.cluster(workers=1, threads_per_worker=2)
        try:
            session.wait_for_workers(1)
            startup = time.perf_counter() - t
            results.append(run_scalekit("scalekit, 1 worker x 2 threads", session, w, data, r))
            _add_note(results[-1], f"cluster start-up {startup:.1f}s excluded")
            _progress(results[-1])
        finally:
            session.close()

        results.append(run_torchrun("torchrun DDP+gloo, 2 procs x 1 thread", w, 2, 1, r))
        _progress(results[-1])

    print()
    print_table(results)
    print()
    print_ratios(results, batch_sizes)
    print(f"\ntotal bench time {time.perf_counter() - started:.0f}s; load average now "
          f"{os.getloadavg()[0]:.1f} (other work on the machine skews every number)")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    checkpoints.cleanup()
    return 0


def _add_note(r: Result, note: str) -> None:
    r.note = "; ".join(filter(None, [note, r.note]))


def _progress(r: Result) -> None:
    print(f"   {r.name:<40} {r.samples_per_s:>9,.0f} samples/s  acc {r.accuracy:.3f}",
          flush=True)


def print_table(results: list[Result]) -> None:
    header = (f"| {'configuration':<40} | {'batch':>5} | {'samples/s':>9} | {'fit s':>6} "
              f"| {'overhead s':>10} | {'test acc':>8} | note")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|---")
    for r in results:
        print(f"| {r.name:<40} | {r.batch_size:>5} | {r.samples_per_s:>9,.0f} | "
              f"{r.wall_s:>6.1f} | {r.overhead_s:>10.2f} | {r.accuracy:>8.3f} | {r.note}")


GLOO_2X1 = "scalekit, 2 workers x 1 thread, gloo"
RATIOS = [
    ("scalekit 1 worker x 1 thread / skorch net.fit 1 thread",
     "scalekit, 1 worker x 1 thread", "skorch net.fit, 1 process x 1 thread"),
    ("scalekit 2 workers x 1 thread / torchrun DDP 2 x 1 thread",
     "scalekit, 2 workers x 1 thread", "torchrun DDP+gloo, 2 procs x 1 thread"),
    ("  the same, scalekit averaging through gloo too / torchrun",
     GLOO_2X1, "torchrun DDP+gloo, 2 procs x 1 thread"),
    ("scalekit 2 workers x 1 thread / scalekit 1 worker x 1 thread",
     "scalekit, 2 workers x 1 thread", "scalekit, 1 worker x 1 thread"),
    ("scalekit 2 workers x 1 thread / scalekit 1 worker x 2 threads",
     "scalekit, 2 workers x 1 thread", "scalekit, 1 worker x 2 threads"),
    ("scalekit 1 worker x 2 threads / skorch net.fit 2 threads",
     "scalekit, 1 worker x 2 threads", "skorch net.fit, 1 process x 2 threads"),
]


def print_ratios(results: list[Result], batch_sizes: list[int]) -> None:
    print("ratios of samples/s (same run; > 1 means the first is faster)")
    for bs in batch_sizes:
        by_name = {r.name: r for r in results if r.batch_size == bs}
        for label, a, b in RATIOS:
            ratio = by_name[a].samples_per_s / by_name[b].samples_per_s
            print(f"  batch {bs:>5}: {label:<62} {ratio:5.2f}")


if __name__ == "__main__":
    sys.exit(main())
