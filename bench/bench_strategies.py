"""Peak memory per rank and throughput of ddp, fsdp and hybrid on one model, in one run.

    python bench/bench_strategies.py              # MLP 64-2048x4-10 (12.7M params), 2 workers
    python bench/bench_strategies.py --quick      # a smoke run (width 1024, 384 samples)
    python bench/bench_strategies.py --workers 4  # hybrid then runs on a 2 x 2 mesh

Every strategy trains the same model (same initial weights, data, seed, global batch,
SGD with momentum) on a *fresh* local cluster of ``--workers`` single-thread workers, so
each rank's peak resident memory belongs to that strategy alone. It prints per strategy:
samples/s of the last epoch (the first pays one-off start-up costs), the bytes of
parameters + gradients + optimizer state each rank held (``state/rank``), the peak
resident memory of each rank's process and how much of it the fit added to an idle
worker, and the test accuracy; then ratios against ddp measured in the same run.
See docs/strategies.md ("Measuring it") for how to read them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import N_CLASSES, N_FEATURES, accuracy_of, make_data  # noqa: E402

MiB = 2**20


class WideMLP(nn.Module):
    """64 -> width x depth -> 10 logits: parameters dominate a rank's memory."""

    def __init__(self, width: int = 2048, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(N_FEATURES, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, N_CLASSES))
        self.seq = nn.Sequential(*layers)

    def forward(self, X):
        return self.seq(X)


@dataclass
class Result:
    label: str
    strategy: str
    world_size: int
    samples_per_s: float
    state_mib: list[float]
    peak_rss_mib: list[float]
    added_mib: list[float]  # peak RSS minus the idle worker's RSS before the fit
    accuracy: float
    wall_s: float
    startup_s: float


def strategies(names: list[str]):
    from scalekit.training.strategies import FSDP, Hybrid

    table = {
        "ddp": ("ddp", "ddp"),
        "fsdp": ("fsdp (wrap children)", "fsdp"),
        "fsdp-linear": ("fsdp (wrap Linear)", FSDP(wrap=("Linear",))),
        "hybrid": ("hybrid (wrap Linear)", Hybrid(wrap=("Linear",), shard_size=2)),
        "local_sgd": ("local_sgd (k=8)", "local_sgd"),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose from {', '.join(table)}")
    return [table[n] for n in names]


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def run_one(label, strategy, args, data) -> Result:
    from skorch import NeuralNetClassifier

    import scalekit as sk
    from scalekit.training.rounds import warm_worker

    X, y, X_test, y_test = data
    started = time.perf_counter()
    session = sk.cluster(workers=args.workers, threads_per_worker=1)
    try:
        session.wait_for_workers(args.workers, timeout=600)
        session.client.run(warm_worker)
        startup = time.perf_counter() - started
        idle = session.client.run(_rss)
        torch.manual_seed(args.seed)  # the same initial weights for every strategy
        net = NeuralNetClassifier(
            WideMLP, module__width=args.width, module__depth=args.depth,
            criterion=nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.01,
            optimizer__momentum=0.9, batch_size=args.batch_size, max_epochs=args.epochs,
            iterator_train__shuffle=True, train_split=None, verbose=0)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-strategies-") as folder:
            run = sk.fit(net, X, y, cluster=session, show=False, seed=args.seed,
                         strategy=strategy, checkpoint=folder)
        wall = time.perf_counter() - t
    finally:
        session.close()
    r = run.report
    ranks = sorted(idle)  # world ranks follow the sorted worker addresses
    last = net.history[-1].get("train_samples_per_s") or r.samples_per_s
    return Result(
        label=label, strategy=r.strategy, world_size=r.world_size, samples_per_s=last,
        state_mib=[b / MiB for b in r.state_bytes], peak_rss_mib=[b / MiB for b in r.peak_rss],
        added_mib=[(p - idle[a]) / MiB for p, a in zip(r.peak_rss, ranks, strict=False)],
        accuracy=accuracy_of(net, X_test, y_test), wall_s=wall, startup_s=startup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: width 1024, 384 samples (2 epochs, as always)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--width", type=int)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", default="ddp,fsdp,fsdp-linear,hybrid",
                        help="comma-separated: ddp, fsdp, fsdp-linear, hybrid, local_sgd")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.width = args.width or (1024 if args.quick else 2048)
    args.samples = args.samples or (384 if args.quick else 1024)
    args.epochs = args.epochs or 2  # the first pays one-off costs; the last is timed

    import dask.config

    n_params = sum(p.numel() for p in WideMLP(args.width, args.depth).parameters())
    data = make_data(args.samples, args.seed)
    print(f"model: MLP 64-{args.width}x{args.depth}-10 ({n_params / 1e6:.1f}M parameters, "
          f"{4 * n_params / MiB:.0f} MiB); {args.samples} samples x {args.epochs} epoch(s), "
          f"global batch {args.batch_size}, SGD momentum 0.9; {args.workers} workers x 1 "
          f"thread, a fresh cluster per strategy; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()
    results = []
    # one checkpoint, after the last epoch (its time is not in the last epoch's samples/s)
    with dask.config.set({"scalekit.checkpoint.every-epochs": 1_000_000}):
        for label, strategy in strategies(args.strategies.split(",")):
            results.append(run_one(label, strategy, args, data))
            r = results[-1]
            print(f"   {label:<22} {r.samples_per_s:>8,.0f} samples/s  peak rss/rank "
                  f"{max(r.peak_rss_mib):6.0f} MiB  acc {r.accuracy:.3f}", flush=True)
    print()
    print_table(results)
    print()
    print_ratios(results)
    print(f"\ntotal bench time {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


def _mib(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def print_table(results: list[Result]) -> None:
    header = (f"| {'strategy':<22} | {'W':>2} | {'samples/s':>9} | {'state/rank MiB':>14} | "
              f"{'peak RSS/rank MiB':>17} | {'added/rank MiB':>14} | {'test acc':>8} | "
              f"{'fit s':>6} |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for r in results:
        print(f"| {r.label:<22} | {r.world_size:>2} | {r.samples_per_s:>9,.0f} | "
              f"{_mib(r.state_mib):>14} | {_mib(r.peak_rss_mib):>17} | "
              f"{_mib(r.added_mib):>14} | {r.accuracy:>8.3f} | {r.wall_s:>6.1f} |")


def print_ratios(results: list[Result]) -> None:
    base = next((r for r in results if r.strategy == "ddp"), None)
    if base is None:
        print("no ddp row: no ratios")
        return
    print("ratios against ddp, same run (largest rank; < 1 means less than ddp)")
    print(f"  {'strategy':<22} {'samples/s':>9} {'state/rank':>10} {'peak RSS/rank':>13} "
          f"{'added/rank':>10}")
    for r in results:
        if r is base:
            continue
        print(f"  {r.label:<22} {r.samples_per_s / base.samples_per_s:>9.2f} "
              f"{max(r.state_mib) / max(base.state_mib):>10.2f} "
              f"{max(r.peak_rss_mib) / max(base.peak_rss_mib):>13.2f} "
              f"{max(r.added_mib) / max(max(base.added_mib), 1e-9):>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
