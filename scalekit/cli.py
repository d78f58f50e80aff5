"""The ``scalekit`` command line (also ``python -m scalekit``).

``scalekit demo`` runs the quickstart without a notebook: start a local cluster, scale
it up, compute on it, switch adaptive scaling on and off, scale down, close, and report
how long each step took. It exits non-zero when a step fails.

``scalekit cluster up|down|list`` manages local clusters that run in the background and
outlive the terminal and any notebook: ``sk.cluster(connect="local")`` joins one.

``scalekit run script.py`` runs a script (a notebook's code as a batch job, with no
edits) on a cluster the command starts or joins: the script's ``sk.cluster()`` returns
that cluster, its ``sk.fit`` trains there, and the epochs print in the terminal.
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

    clusters = commands.add_parser(
        "cluster", help="local clusters in the background: up, scale, status, down, list",
        description="Local clusters that run in the background, outlive this terminal and "
        "any notebook, and bind 127.0.0.1 only. A notebook joins one with "
        "sk.cluster(connect='local') (or 'local:NAME'). The verbs are the %scalekit "
        "magic's; adaptive scaling is decided where the fits run, so it is switched on "
        "from a notebook that joined the cluster (session.adapt, %scalekit adapt).")
    verbs = clusters.add_subparsers(dest="verb", metavar="<up|scale|status|down|list>")
    up = verbs.add_parser("up", help="start a background cluster",
                          description="Start a local cluster in the background; returns "
                          "once its workers are up (unset options come from dask.config, "
                          "scalekit.cluster.*).")
    up.add_argument("-n", "--workers", type=int, metavar="N", help="workers to start")
    up.add_argument("--threads", type=int, metavar="T", dest="threads_per_worker",
                    help="threads per worker")
    up.add_argument("--memory-limit", metavar="SIZE",
                    help="per worker: 'auto', a size such as '2GiB', or 'none'")
    up.add_argument("--max-workers", type=int, metavar="M",
                    help="upper bound for scaling it")
    up.add_argument("--gpus", metavar="auto|N|IDS",
                    help="one worker per GPU, pinned to it: 'auto', N or ids such as 0,2")
    up.add_argument("--name", default="default", help="its name (default: default)")
    down = verbs.add_parser("down", help="end a background cluster and all its processes")
    down.add_argument("--name", default="default", help="its name (default: default)")
    verbs.add_parser("list", help="the background clusters running for this user")
    # the magic's verbs, on a background cluster
    scale = verbs.add_parser("scale", help="scale a background cluster to N workers "
                             "(switches adaptive off)")
    scale.add_argument("n", type=int, metavar="N", help="number of workers")
    scale.add_argument("--name", default="default", help="its name (default: default)")
    status = verbs.add_parser("status", help="a text summary of a background cluster")
    status.add_argument("--name", default="default", help="its name (default: default)")

    run = commands.add_parser(
        "run", help="run a Python script whose sk.cluster()/sk.fit use a cluster started here",
        description="Start a cluster (or join one with --connect), run SCRIPT with its "
        "arguments as __main__ (its sk.cluster() returns this cluster, so a notebook's code "
        "runs unchanged), print each epoch, and close the cluster afterwards (a joined one "
        "keeps running).")
    run.add_argument("script", help="the Python file to run")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    run.add_argument("-n", "--workers", type=int, metavar="N", help="workers to start")
    run.add_argument("--backend", metavar="NAME", help="'local' or 'kubernetes'")
    run.add_argument("--threads", type=int, metavar="T", dest="threads_per_worker",
                     help="threads per worker")
    run.add_argument("--memory-limit", metavar="SIZE", help="per worker")
    run.add_argument("--gpus", metavar="auto|N|IDS", help="one worker per GPU")
    run.add_argument("--connect", metavar="TARGET",
                     help="join a running cluster: 'local', 'local:NAME', a scheduler file "
                     "or an address")
    run.add_argument("--image", help="kubernetes: scheduler and worker image")
    run.add_argument("--namespace", help="kubernetes: namespace of the cluster")
    run.add_argument("--detach", action="store_true",
                     help="the script's fits run on the cluster, not in this process: "
                     "the command returns once they are submitted (needs --connect: a "
                     "cluster that outlives the command)")

    def joined(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--connect", default="local", metavar="TARGET",
                         help="the cluster: 'local' (default), 'local:NAME', a scheduler "
                         "file or an address")
        return sub

    joined(commands.add_parser("runs", help="the runs on a cluster (detached or not)"))
    attach = joined(commands.add_parser(
        "attach", help="follow a run: live progress, then its epoch log",
        description="Follow the run RUN: a live progress bar and a line per epoch until "
        "it ends (Ctrl-C stops following; the run goes on)."))
    attach.add_argument("run", metavar="RUN", help="the run's id (see `scalekit runs`)")
    cancel = joined(commands.add_parser("cancel", help="end a run for everyone"))
    cancel.add_argument("run", metavar="RUN")
    cancel.add_argument("--force", action="store_true",
                        help="cancel a run that someone else started")
    logs = joined(commands.add_parser("logs", help="a run's event log, as text"))
    logs.add_argument("run", metavar="RUN")
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
    if args.command == "cluster":
        if args.verb is None:
            parser.parse_args(["cluster", "--help"])
        return _cluster(args)
    if args.command == "run":
        return _run(args)
    if args.command in ("runs", "attach", "cancel", "logs"):
        return _runs_command(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks


def _cluster(args: argparse.Namespace) -> int:
    from scalekit.backends import background
    from scalekit.errors import ScalekitError

    try:
        if args.verb == "up":
            from scalekit.backends.gpus import gpu_cluster_config, visible_gpus
            from scalekit.config import ClusterConfig

            given = {k: getattr(args, k) for k in ("workers", "threads_per_worker",
                                                   "memory_limit", "max_workers", "gpus")}
            config = ClusterConfig.from_config(backend="local", **given)
            if config.gpus is not None:
                config, notice = gpu_cluster_config(
                    config, visible_gpus(), workers=args.workers,
                    threads=args.threads_per_worker, max_workers=args.max_workers)
                if notice:
                    print(notice)
            files = background.start(config, args.name)
            named = args.name != "default"
            print(f"background cluster {args.name!r} up: {files.address()} "
                  f"({config.workers} worker{'s' if config.workers != 1 else ''}, pid "
                  f"{files.pid()})\n"
                  f"  scheduler file: {files.scheduler_file}\n"
                  f"  in a notebook:  sk.cluster(connect=\"local"
                  f"{':' + args.name if named else ''}\")\n"
                  f"  end it:         scalekit cluster down"
                  f"{' --name ' + args.name if named else ''}")
            return 0
        if args.verb == "down":
            if background.stop(args.name):
                print(f"background cluster {args.name!r} ended")
                return 0
            print(f"no background cluster {args.name!r} is running", file=sys.stderr)
            return 1
        if args.verb in ("scale", "status"):
            return _steer(args)
        running = background.list_clusters()
        for files in running:
            print(f"{files.name}\t{files.address()}\tpid {files.pid()}")
        if not running:
            print("no background clusters are running", file=sys.stderr)
        return 0
    except ScalekitError as exc:
        print(f"scalekit cluster {args.verb}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import os
    import runpy

    from scalekit.errors import ScalekitError
    from scalekit.session import cluster, serving_scripts

    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        print(f"scalekit run: no such script: {args.script}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {}
    if args.detach and not args.connect:
        print("scalekit run --detach: the fits must outlive this command: join a cluster "
              "that does (--connect local, after `scalekit cluster up`)", file=sys.stderr)
        return 2
    if args.connect:
        options["connect"] = args.connect
    else:
        options.update({k: v for k in ("workers", "backend", "threads_per_worker",
                                       "memory_limit", "gpus")
                        if (v := getattr(args, k)) is not None})
        kube = {k: v for k in ("image", "namespace") if (v := getattr(args, k)) is not None}
        if kube:
            options["kubernetes"] = kube
    try:
        session = cluster(**options)
    except ScalekitError as exc:
        print(f"scalekit run: {exc}", file=sys.stderr)
        return 1
    unsubscribe = session.bus.subscribe(_print_progress, replay=False)
    argv, path = sys.argv, list(sys.path)
    sys.argv = [script, *args.args]
    sys.path.insert(0, os.path.dirname(script))
    started = time.time()
    try:
        with serving_scripts(session, detach=args.detach):
            runpy.run_path(script, run_name="__main__")
        if args.detach:
            _print_submitted(session, since=started)
        return 0
    except SystemExit as exc:  # the script's own exit status
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv, sys.path[:] = argv, path
        unsubscribe()
        session.close()  # a joined cluster: only this connection


def _steer(args: argparse.Namespace) -> int:
    """``scale`` and ``status``, as the magic has them, on a background cluster
    (through a short-lived connection). Adaptive scaling is decided where the fits run,
    so it is switched on from a notebook (``session.adapt``, ``%scalekit adapt``)."""
    from scalekit.session import cluster

    target = "local" if args.name == "default" else f"local:{args.name}"
    session = cluster(connect=target)
    try:
        if args.verb == "scale":
            session.scale(args.n)
            session.wait_for_workers(args.n, timeout=120)
        print(repr(session))
        return 0
    finally:
        session.close()


def _print_submitted(session: Any, since: float) -> None:
    from scalekit import remote_runs
    from scalekit.training.run_registry import owner

    me = owner()
    for run in remote_runs.runs(session):
        if run.get("detached") and run.get("owner") == me and (run.get("started") or 0) >= since:
            print(f"detached run {run['run_id']} is training on the cluster: follow it with "
                  f"`scalekit attach {run['run_id']}`", flush=True)


def _runs_command(args: argparse.Namespace) -> int:
    from scalekit import remote_runs
    from scalekit.errors import ScalekitError
    from scalekit.session import cluster

    try:
        session = cluster(connect=args.connect)
    except ScalekitError as exc:
        print(f"scalekit {args.command}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "runs":
            print(remote_runs.runs(session))
            return 0
        run = remote_runs.attach(args.run, session)
        if args.command == "cancel":
            run.cancel(force=args.force)
            print(f"run {args.run} cancelled")
            return 0
        if args.command == "logs":
            for event in run.events:
                _print_progress(event)
            return 0
        return _follow(run)
    except ScalekitError as exc:
        print(f"scalekit {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        session.close()


def _follow(run: Any) -> int:
    """A live progress bar (tqdm) and a line per epoch until the run ends."""
    from tqdm import tqdm

    from scalekit.events import BatchProgress, EpochEnded, RunStarted

    bar = tqdm(total=max(1, int(run.record.get("max_epochs") or 1)), unit="epoch",
               desc=f"run {run.run_id}", file=sys.stdout, dynamic_ncols=True)
    bar.n = int(run.record.get("epoch") or 0)
    bar.refresh()

    def on_event(event: Any) -> None:
        if isinstance(event, RunStarted):
            bar.total = event.max_epochs
        elif isinstance(event, EpochEnded):
            bar.n = event.epoch
            bar.refresh()
        if isinstance(event, BatchProgress):
            bar.set_postfix_str(f"batch {event.batch}/{event.n_batches}", refresh=True)
        else:
            with bar.external_write_mode(file=sys.stdout):
                _print_progress(event)

    for event in list(run.events):  # what happened before we attached
        _print_progress(event)
    unsubscribe = run.bus.subscribe(on_event, replay=False)
    try:
        while not run.done:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print(f"\nstopped following run {run.run_id}; it goes on", flush=True)
        return 130
    finally:
        unsubscribe()
        bar.close()
    print(f"run {run.run_id} {run.status}", flush=True)
    return 0 if run.status == "finished" else 1


def _print_progress(event: Any) -> None:
    """One line per epoch, resize, recovery and end of a fit, in the terminal."""
    from scalekit.events import EpochEnded, Notice, Recovered, Resized, RunFinished, RunStarted

    if isinstance(event, RunStarted):
        line = (f"fit {event.run_id}: {event.max_epochs} epochs on {event.world_size} "
                f"worker{'s' if event.world_size != 1 else ''}")
    elif isinstance(event, EpochEnded):
        scores = "  ".join(
            f"{k} {v:.4f}" for k, v in event.row.items()
            if isinstance(v, float) and k not in ("epoch", "dur")
            and not k.endswith(("_best", "_count", "_samples_per_s")))
        took = f", {event.row['dur']:.1f} s" if event.row.get("dur") else ""
        line = (f"epoch {event.epoch:>3}  {scores}  ({event.world_size} "
                f"worker{'s' if event.world_size != 1 else ''}{took})")
    elif isinstance(event, Resized):
        line = f"resized {event.old} -> {event.new} workers ({event.reason})"
    elif isinstance(event, Recovered):
        line = f"recovered: {event.reason} (lost {event.lost_steps} steps)"
    elif isinstance(event, RunFinished):
        line = f"fit {event.run_id} {event.status} after {event.epochs} epochs"
    elif isinstance(event, Notice) and event.level in ("warning", "error"):
        line = f"{event.level}: {event.message}"
    else:
        return
    print(line, flush=True)


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
