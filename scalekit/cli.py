"""The ``scalekit`` command line (also ``python -m scalekit``).

``scalekit demo`` runs the quickstart without a notebook: start a local cluster, scale
it up, compute on it, switch adaptive scaling on and off, scale down, close, and report
how long each step took. It exits non-zero when a step fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

DEMO_ARRAY = 2_000_000  # sum of squares of arange(DEMO_ARRAY) in 20 chunks


def _parser() -> argparse.ArgumentParser:
    from scalekit import __version__

    parser = argparse.ArgumentParser(
        prog="scalekit",
        description="Scale PyTorch/skorch training from a notebook on a Dask cluster.",
    )
    parser.add_argument("--version", action="version", version=f"scalekit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    demo = commands.add_parser(
        "demo",
        help="headless quickstart: start, scale, compute, adapt, close a local cluster",
        description="Start a local cluster, scale it up by one worker, run a dask.array "
        "computation, switch adaptive scaling on and off, scale down to one worker, close, "
        "and print how long each step took.",
    )
    demo.add_argument("-n", "--workers", type=int, default=2, metavar="N",
                      help="workers to start with (default 2); the demo scales to N+1")
    demo.add_argument("--json", action="store_true",
                      help="print the measurements as one JSON object on stdout")
    demo.add_argument("--timeout", type=float, default=60.0, metavar="S",
                      help="seconds to wait for workers at each step (default 60)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scalekit`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        if args.workers < 1:
            parser.error(f"--workers must be at least 1, got {args.workers}")
        return _demo(args.workers, as_json=args.json, timeout=args.timeout)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks


def _demo(workers: int, *, as_json: bool, timeout: float) -> int:
    out: TextIO = sys.stderr if as_json else sys.stdout
    report: dict[str, Any] = {"ok": False, "workers": workers, "steps": {}}
    steps: dict[str, float] = report["steps"]
    started = time.perf_counter()
    session = None

    def step(name: str, t0: float, message: str) -> None:
        steps[name] = round(time.perf_counter() - t0, 3)
        print(f"{message:<44} {steps[name]:7.2f} s", file=out, flush=True)

    try:
        import dask.array as da

        from scalekit.session import cluster

        t0 = time.perf_counter()
        session = cluster(workers=workers)
        session.wait_for_workers(workers, timeout=timeout)
        step("up", t0, f"cluster up with {workers} worker{'s' if workers != 1 else ''}")
        report["dashboard_link"] = session.dashboard_link

        bigger = workers + 1
        t0 = time.perf_counter()
        session.scale(bigger)
        session.wait_for_workers(bigger, timeout=timeout)
        step("scale_up", t0, f"scaled to {bigger} workers")

        t0 = time.perf_counter()
        n = DEMO_ARRAY
        expression = (da.arange(n, chunks=n // 20, dtype="int64") ** 2).sum()
        result = int(session.client.compute(expression).result(timeout=timeout))
        expected = (n - 1) * n * (2 * n - 1) // 6
        step("compute", t0, f"sum of squares of arange({n:,}) = {result}")
        report["result"] = result
        if result != expected:
            raise RuntimeError(f"wrong result: got {result}, expected {expected}")

        t0 = time.perf_counter()
        session.adapt(1, bigger)
        step("adapt_on", t0, f"adaptive scaling on (1..{bigger})")
        t0 = time.perf_counter()
        session.stop_adapt()
        step("adapt_off", t0, "adaptive scaling off")

        t0 = time.perf_counter()
        session.scale(1)
        session.wait_for_workers(1, timeout=timeout)
        step("scale_down", t0, "scaled down to 1 worker")

        t0 = time.perf_counter()
        session.close()
        step("close", t0, "closed")
        report["ok"] = True
    except Exception as exc:  # report any failure as data and a non-zero exit status
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"scalekit demo failed: {report['error']}", file=sys.stderr, flush=True)
    finally:
        if session is not None and not session.closed:
            try:
                session.close()
            except Exception as exc:
                print(f"closing the cluster failed: {exc}", file=sys.stderr)
    report["total_s"] = round(time.perf_counter() - started, 3)
    if as_json:
        print(json.dumps(report, indent=2), flush=True)
    else:
        verdict = "ok" if report["ok"] else "FAILED"
        timings = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps.items())
        print(f"demo {verdict} in {report['total_s']:.2f} s ({timings})", flush=True)
    return 0 if report["ok"] else 1
