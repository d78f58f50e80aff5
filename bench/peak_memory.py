"""Peak memory of a tutorial notebook: its kernel plus every process the kernel starts.

mybinder.org gives a session 2 GB of RAM, for the Jupyter server, the kernel and the Dask
workers together. This runs each notebook top to bottom with nbclient (a kernel of the
interpreter running this script), samples the whole process tree under this script
(the kernel, its Dask worker processes, their helpers) every ``--interval`` seconds
and reports the peaks:

- **RSS sum**: resident memory added up over the processes. It counts pages shared
  between processes (libraries, torch) once per process, so it is an upper bound.
- **PSS sum**: proportional set size added up: each shared page split between the
  processes sharing it. This is the closest estimate of what the processes add to a
  container's memory use.

Usage::

    .venv/bin/python bench/peak_memory.py                       # every notebooks/*.ipynb
    .venv/bin/python bench/peak_memory.py notebooks/01_quickstart.ipynb --json out.json
    .venv/bin/python bench/peak_memory.py --limit-mib 1800      # exit 1 above the limit

The exit status is 1 when a notebook fails or its peak PSS sum exceeds ``--limit-mib``.
The Jupyter server itself is not included (it is not started here); budget about
150 MiB more for it on Binder.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


@dataclass
class Peak:
    notebook: str
    seconds: float = 0.0
    ok: bool = False
    error: str = ""
    peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0
    processes_at_peak: int = 0
    kernel_peak_rss_mib: float = 0.0
    samples: int = 0
    by_process_at_peak: dict[str, float] = field(default_factory=dict)


class TreeSampler(threading.Thread):
    """Samples RSS and PSS of every descendant of this process until stopped."""

    def __init__(self, peak: Peak, interval: float) -> None:
        super().__init__(daemon=True, name="peak-memory-sampler")
        self.peak = peak
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()

    def sample(self) -> None:
        rss = pss = 0
        by_process: dict[str, float] = {}
        procs = psutil.Process().children(recursive=True)
        for p in procs:
            try:
                info = p.memory_full_info()  # rss, pss (Linux: /proc/<pid>/smaps_rollup)
                name = _describe(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            by_process[f"{p.pid} {name}"] = round(info.rss / MIB, 1)
            if name == "kernel":
                self.peak.kernel_peak_rss_mib = max(self.peak.kernel_peak_rss_mib,
                                                    info.rss / MIB)
        self.peak.samples += 1
        if pss / MIB > self.peak.peak_pss_mib:
            self.peak.peak_pss_mib = pss / MIB
        if rss / MIB > self.peak.peak_rss_mib:
            self.peak.peak_rss_mib = rss / MIB
            self.peak.processes_at_peak = len(by_process)
            self.peak.by_process_at_peak = by_process


def _describe(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    if "ipykernel" in cmd:
        return "kernel"
    if "multiprocessing" in cmd or "spawn_main" in cmd:
        return "worker-process"
    return p.name()


def kernelspec_for_this_python(base: Path) -> str:
    """A kernelspec running this interpreter, found first on JUPYTER_PATH."""
    spec = base / "kernels" / "peak-memory"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "peak memory", "language": "python",
    }))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(base), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    return "peak-memory"


def measure(path: Path, *, interval: float, timeout: float, kernel: str,
            executed_dir: Path | None = None) -> Peak:
    import nbformat
    from nbclient import NotebookClient

    peak = Peak(notebook=path.name)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="peak-memory-") as workdir:
        # each cell's outputs as they were when it finished: a live panel's output is
        # updated later (to its static last state when its cluster or run ends)
        as_executed: dict[int, list] = {}

        def keep(cell: Any, cell_index: int, **_: Any) -> None:
            as_executed[cell_index] = copy.deepcopy(cell.get("outputs", []))

        client = NotebookClient(nb, kernel_name=kernel, timeout=timeout, startup_timeout=120,
                                resources={"metadata": {"path": workdir}},
                                on_cell_executed=keep)
        sampler = TreeSampler(peak, interval)
        sampler.start()
        started = time.perf_counter()
        try:
            client.execute()
            peak.ok = True
        except Exception as exc:  # a failing notebook is reported, not hidden
            peak.error = f"{type(exc).__name__}: {str(exc)[-1500:]}"
        finally:
            peak.seconds = time.perf_counter() - started
            sampler.stop()
            if executed_dir is not None:  # with its outputs, for inspection
                executed_dir.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, executed_dir / path.name)
                (executed_dir / f"{path.stem}.as-executed.json").write_text(
                    json.dumps({str(i): o for i, o in sorted(as_executed.items())}))
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per cell")
    parser.add_argument("--limit-mib", type=float, default=None,
                        help="fail when a notebook's peak PSS sum exceeds this")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--executed-dir", type=Path,
                        help="save the executed notebooks (with outputs) in this folder, and "
                        "beside each, NAME.as-executed.json: each cell's outputs as they were "
                        "right after it ran")
    args = parser.parse_args(argv)

    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="peak-memory-kernels-") as kernels:
        kernel = kernelspec_for_this_python(Path(kernels))
        results = [measure(p, interval=args.interval, timeout=args.timeout, kernel=kernel,
                           executed_dir=args.executed_dir)
                   for p in paths]

    print(f"{'notebook':<34} {'ok':<4} {'seconds':>8} {'peak RSS sum':>13} "
          f"{'peak PSS sum':>13} {'procs':>6} {'kernel RSS':>11}")
    for r in results:
        print(f"{r.notebook:<34} {'yes' if r.ok else 'NO':<4} {r.seconds:>8.1f} "
              f"{r.peak_rss_mib:>9.0f} MiB {r.peak_pss_mib:>9.0f} MiB "
              f"{r.processes_at_peak:>6} {r.kernel_peak_rss_mib:>7.0f} MiB")
        if r.error:
            print(f"  error: {r.error}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    failed = [r for r in results if not r.ok]
    over = [r for r in results
            if args.limit_mib is not None and r.peak_pss_mib > args.limit_mib]
    for r in over:
        print(f"{r.notebook}: peak PSS sum {r.peak_pss_mib:.0f} MiB is over the limit "
              f"of {args.limit_mib:.0f} MiB")
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
