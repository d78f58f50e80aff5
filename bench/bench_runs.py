"""Detached runs against attached ones, in one run, on one background local cluster.

    python bench/bench_runs.py            # 50k samples, 2 epochs, 3 repeats each
    python bench/bench_runs.py --quick    # 10k samples, 1 epoch, 1 repeat

Prints the wall time of the same fit driven from this process (attached) and run on the
cluster (``detach=True``: submit, train in the scheduler's process, fetch the net), their
ratio, and how long ``sk.attach`` takes to a panel holding the run's log so far.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import Workload, make_data, skorch_net  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    n, epochs = (10_000, 1) if args.quick else (50_000, 2)
    repeats = args.repeats or (1 if args.quick else 3)
    w = Workload(n=n, epochs=epochs, batch_size=256)
    X, y, X_test, y_test = make_data(n)

    cache = tempfile.TemporaryDirectory(prefix="bench-runs-")
    os.environ["XDG_CACHE_HOME"] = cache.name  # a private background cluster
    here = str(Path(__file__).resolve().parent)  # its workers import the bench's model
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here,
                                                             os.environ.get("PYTHONPATH")]))
    import scalekit as sk
    from scalekit.backends import background
    from scalekit.config import ClusterConfig

    background.start(ClusterConfig(workers=2, threads_per_worker=1), "bench")
    try:
        session = sk.cluster(connect="local:bench")
        sk.fit(skorch_net(w, max_epochs=1), X[:2048], y[:2048], cluster=session, show=False,
               checkpoint=False)  # warm the workers
        attached, detached = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            sk.fit(skorch_net(w), X, y, cluster=session, show=False, checkpoint=False)
            attached.append(time.perf_counter() - t)
            t = time.perf_counter()
            run = sk.fit(skorch_net(w), X, y, cluster=session, show=False, checkpoint=False,
                         detach=True)
            run.wait(timeout=600)
            detached.append(time.perf_counter() - t)
        # attach latency: a run in progress, attached from a fresh object
        run = sk.fit(skorch_net(w), X, y, cluster=session, show=False, checkpoint=False,
                     detach=True)
        time.sleep(1.0)
        t = time.perf_counter()
        again = sk.attach(run.run_id, cluster=session)
        latency = time.perf_counter() - t
        logged = len(again.events)
        again.wait(timeout=600)
        session.close()
    finally:
        background.stop("bench")
        cache.cleanup()
    best_a, best_d = min(attached), min(detached)
    print(f"workload: MLP 64-512-512-10, {n} samples, {epochs} epoch(s), batch 256, 2 "
          f"workers x 1 thread; best of {repeats}")
    print(f"  attached fit (controller in this process)    {best_a:7.2f} s")
    print(f"  detached fit (controller on the cluster)      {best_d:7.2f} s  (submit, "
          "train, fetch the net)")
    print(f"  detached / attached wall time                 {best_d / best_a:7.2f}")
    print(f"  sk.attach to a panel with the run's log        {latency * 1000:7.0f} ms "
          f"({logged} events replayed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
