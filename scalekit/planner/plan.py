"""``sk.plan``: measure, model, solve; a :class:`Plan` that explains itself and applies.

    plan = sk.plan(net, X, y, budget=sk.planner.Budget(cores=8, memory_per_worker="4GiB"))
    plan                                  # the table of every candidate considered
    run = plan.apply(session, net, X, y)  # scale the cluster and start the fit

The predicted samples/s of a candidate is what the user will see: the fit's
``epochs x samples`` over the predicted wall time of ``sk.fit``, its per-fit and
per-epoch overhead and the data transfer included.
"""

from __future__ import annotations

import dataclasses
import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

from scalekit.errors import UsageError
from scalekit.planner.budget import Budget, PlanError
from scalekit.planner.model import EXACT, Measurement, ScalingModel, fit_scaling_model
from scalekit.planner.overhead import describe
from scalekit.planner.solve import Candidate, Solution, _duration, _size, solve


@dataclasses.dataclass(frozen=True)
class Plan:
    """An allocation chosen for a fit, with the evidence for it.

    Attributes
    ----------
    choice : Candidate
        The chosen allocation and its predictions.
    candidates : tuple of Candidate
        Every allocation considered, feasible or not (see :meth:`table`).
    budget : Budget
    objective : str
        ``"throughput"`` or ``"cost"``.
    model : ScalingModel
        The fitted throughput and memory model.
    measurements : tuple of Measurement
        What the probes measured.
    epochs, n_samples, data_bytes :
        The fit planned for: its epochs, its samples and the bytes of data every worker
        receives.
    """

    choice: Candidate
    candidates: tuple[Candidate, ...]
    budget: Budget
    objective: str
    model: ScalingModel
    measurements: tuple[Measurement, ...] = ()
    epochs: int | None = None
    n_samples: int | None = None
    deadline: float | None = None
    data_bytes: int = 0

    # -- the allocation ------------------------------------------------------------------
    @property
    def workers(self) -> int:
        """Workers to run (also the target for adaptive scaling)."""
        return self.choice.workers

    @property
    def threads_per_worker(self) -> int:
        return self.choice.threads

    @property
    def gpus(self) -> int:
        """GPU workers to run (0: CPU workers); each holds one GPU."""
        return self.workers if self.choice.gpus else 0

    @property
    def strategy(self) -> Any:
        """The strategy object to pass to ``sk.fit(strategy=...)``."""
        return self.choice.strategy_object()

    @property
    def adaptive_bounds(self) -> tuple[int, int]:
        """``(minimum, maximum)`` for ``session.adapt``: grow to the plan while a fit
        runs, back to one worker when none does."""
        return 1, self.workers

    # -- acting on it --------------------------------------------------------------------
    def cluster(self, **options: Any) -> Any:
        """Start a cluster of this plan's shape, warmed for its first fit
        (``sk.cluster(workers, threads_per_worker)``; for GPU workers
        ``sk.cluster(gpus=workers, threads_per_worker=...)``)."""
        from scalekit.planner.probe import warm
        from scalekit.session import cluster

        if self.gpus:
            options.setdefault("gpus", self.gpus)
        session = cluster(workers=self.workers, threads_per_worker=self.threads_per_worker,
                          **options)
        session.wait_for_workers(self.workers, timeout=300)
        warm(session, gpus=self.choice.gpus)
        return session

    def apply(self, session: Any, net: Any, X: Any, y: Any = None, *, adaptive: bool = False,
              wait: bool = True, show: bool = True, timeout: float = 300.0,
              **fit_kwargs: Any) -> Any:
        """Scale ``session`` to the plan and start the fit with its strategy.

        Workers the scaling added (or a cluster it starts) are warmed first, as the
        probes' workers were (imports, the first optimizer step, CUDA, and a throw-away
        one-epoch fit on two batches), so the fit costs what the plan predicted.
        The net trains where the plan says: on GPU workers with ``device="cuda"``, else
        on the CPU (``net.device`` is set when it differs).

        Parameters
        ----------
        session : ClusterSession or None
            The cluster to use; its workers must have the plan's threads per worker
            (a worker's thread count is fixed when it starts), and for a GPU plan be GPU
            workers (``sk.cluster(gpus=...)``), which it scales to ``plan.workers``.
            ``None`` starts a new cluster of the plan's shape (``run.session`` holds it;
            close it when done).
        adaptive : bool
            Instead of a fixed size, switch adaptive scaling on with the plan as its
            target (:attr:`adaptive_bounds`): the cluster holds ``plan.workers`` while
            the fit runs and shrinks to one worker afterwards.
        wait, show, **fit_kwargs :
            As for ``sk.fit`` (``checkpoint=``, ``seed=``, ...).

        Returns
        -------
        TrainingRun
        """
        from scalekit.fitting import fit
        from scalekit.planner.probe import warm, warm_up_fit

        for key in ("strategy", "max_workers", "cluster"):
            if key in fit_kwargs:
                raise UsageError(f"plan.apply sets {key}= from the plan; leave it out (or "
                                 f"call sk.fit yourself with plan.workers and plan.strategy)")
        device = "cuda" if self.gpus else "cpu"
        if str(getattr(net, "device", device)).split(":")[0] != device:
            net.set_params(device=device)
        if session is None:
            session, grew = self.cluster(), True
        else:
            self._check_session(session)
            before = len(session.client.nthreads())
            session.scale(self.workers)
            session.wait_for_workers(self.workers, timeout=timeout)
            warm(session, gpus=self.choice.gpus)
            grew = len(session.client.nthreads()) > before
        if grew:  # new workers: their first fit's one-off costs, before the timed one
            warm_up_fit(session, net, X, y, strategy=self.strategy, workers=self.workers,
                        gpus=self.choice.gpus, timeout=timeout)
        run = fit(net, X, y, cluster=session, strategy=self.strategy, max_workers=self.workers,
                  wait=not adaptive and wait, show=show, **fit_kwargs)
        if adaptive:
            _until_attached(session, run)
            low, high = self.adaptive_bounds
            session.adapt(low, high)
            if wait:
                run.wait()
        return run

    def _check_session(self, session: Any) -> None:
        from scalekit.planner.probe import gpu_workers

        shape = (f"sk.cluster(gpus={self.workers}, threads_per_worker="
                 f"{self.threads_per_worker})" if self.gpus else
                 f"sk.cluster(workers={self.workers}, threads_per_worker="
                 f"{self.threads_per_worker})")
        if self.gpus:
            workers = session.client.nthreads()
            with_gpu = gpu_workers(session.client)
            if not workers or len(with_gpu) != len(workers):
                raise UsageError(
                    f"this plan wants {self.workers} GPU worker(s) but "
                    f"{len(workers) - len(with_gpu)} of the cluster's {len(workers)} "
                    f"workers have no GPU; pass None to start a cluster of the plan's "
                    f"shape, or start one with {shape}")
        have = _threads_of(session)
        if have is not None and have != self.threads_per_worker:
            raise UsageError(
                f"this plan wants {self.threads_per_worker} thread(s) per worker but the "
                f"cluster's workers have {have}; pass None to start a cluster of the "
                f"plan's shape, or start one with {shape}")

    # -- explaining it -------------------------------------------------------------------
    def table(self) -> list[dict[str, Any]]:
        """One row per candidate: the chosen one first, then feasible ones by the
        objective, then the infeasible ones with why not."""
        def key(c: Candidate) -> tuple[Any, ...]:
            score = -c.samples_per_s if self.objective == "throughput" else (c.fit_cost or 0.0)
            return (c != self.choice, not c.feasible, score, c.cores, c.workers)

        rows = []
        for c in sorted(self.candidates, key=key):
            rows.append({
                "chosen": c == self.choice, "workers": c.workers, "threads": c.threads,
                "gpus": c.gpus, "strategy": c.label.split(", ", 1)[1],
                "samples_per_s": c.samples_per_s,
                "steady_samples_per_s": c.steady_samples_per_s,
                "memory_per_rank": c.memory_per_rank, "cost_per_hour": c.cost_per_hour,
                "fit_seconds": c.fit_seconds, "overhead_seconds": c.overhead_seconds,
                "fit_cost": c.fit_cost, "feasible": c.feasible,
                "why_not": "; ".join(c.why_not), "note": c.note,
            })
        return rows

    def summary(self) -> str:
        c = self.choice
        goal = "highest throughput" if self.objective == "throughput" else "lowest cost"
        timed = c.fit_seconds is not None
        parts = [f"plan ({goal}): {c.label} -> {c.samples_per_s:,.0f} samples/s"
                 f"{' end to end' if timed else ''}, {_size(c.memory_per_rank)}/rank"]
        if timed:
            parts.append(f"{self.epochs} epochs of {self.n_samples:,} samples in about "
                         f"{_duration(c.fit_seconds)} ({_duration(c.overhead_seconds or 0.0)} "
                         "of it overhead)")
        if self.budget.priced:
            parts.append(f"{c.cost_per_hour:.2f}/h")
        return ", ".join(parts)

    def _columns(self) -> list[tuple[str, str]]:
        cols = [("", "chosen"), ("workers", "workers"), ("threads", "threads")]
        if any(c.gpus for c in self.candidates):
            cols.append(("GPUs", "gpus"))
        timed = bool(self.epochs and self.n_samples)
        cols += [("strategy", "strategy"), ("samples/s", "samples_per_s")]
        if timed:
            cols.append(("steady", "steady_samples_per_s"))
        cols.append(("memory/rank", "memory_per_rank"))
        if self.budget.priced:
            cols.append(("cost/h", "cost_per_hour"))
        if timed:
            cols += [("fit time", "fit_seconds"), ("overhead", "overhead_seconds")]
            if self.budget.priced:
                cols.append(("fit cost", "fit_cost"))
        cols += [("feasible", "feasible"), ("why not / note", "why_not")]
        return cols

    def _cells(self, row: dict[str, Any]) -> list[str]:
        out = []
        for _, key in self._columns():
            v = row[key]
            if key == "chosen":
                out.append("\u2192" if v else "")
            elif key in ("samples_per_s", "steady_samples_per_s"):
                out.append(f"{v:,.0f}")
            elif key == "memory_per_rank":
                out.append(_size(v))
            elif key in ("cost_per_hour", "fit_cost"):
                out.append("" if v is None else f"{v:.2f}")
            elif key in ("fit_seconds", "overhead_seconds"):
                out.append("" if v is None else _duration(v))
            elif key == "feasible":
                out.append("yes" if v else "no")
            elif key == "why_not":
                out.append("; ".join(x for x in (row["why_not"], row["note"]) if x))
            else:
                out.append(str(v))
        return out

    def __repr__(self) -> str:
        rows = [[h for h, _ in self._columns()]] + [self._cells(r) for r in self.table()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [self.summary()]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
        t = self.model.throughput
        lines.append(f"model: per sample a/(W s(T)) + b + c_s log2 W, p = {t.p:.2f} (threads' "
                     f"parallel fraction), rms error {t.rms_error:.0%} over "
                     f"{len(self.model.measured)} measurements")
        lines.append(describe(self.model.overhead))
        lines += [f"note: {n}" for n in self.model.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in self._columns())
        body = []
        for row in self.table():
            style = ' style="font-weight:bold"' if row["chosen"] else (
                ' style="color:#888"' if not row["feasible"] else "")
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in self._cells(row))
            body.append(f"<tr{style}>{cells}</tr>")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.model.notes)
        t = self.model.throughput
        fit = (f"model: t = a/(W&middot;s(T)) + b + c<sub>s</sub>&middot;log<sub>2</sub>W with "
               f"p = {t.p:.2f} (thread parallel fraction), fitted to "
               f"{len(self.measurements) or len(self.model.measured)} measurements, "
               f"rms error {t.rms_error:.0%}; {html.escape(describe(self.model.overhead))}")
        return (f"<div class='scalekit-plan'><p><b>{html.escape(self.summary())}</b></p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
                f"<p style='font-size:smaller'>{fit}</p>"
                f"{'<ul>' + notes + '</ul>' if notes else ''}</div>")


def _threads_of(session: Any) -> int | None:
    counts = set(session.client.nthreads().values())
    return counts.pop() if len(counts) == 1 else None


def _until_attached(session: Any, run: Any, timeout: float = 10.0) -> None:
    """Wait until the fit is attached to the session, so adaptive scaling sees its
    demand before it decides anything."""
    deadline = time.monotonic() + timeout
    while not run.done and run.controller not in getattr(session, "_training", [run.controller]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)


def plan(
    net: Any, X: Any, y: Any = None, *, budget: Budget | Mapping[str, Any] | None = None,
    objective: str = "throughput", epochs: int | None = None,
    deadline: float | str | None = None, session: Any = None,
    strategies: Sequence[str] = EXACT, measurements: Sequence[Measurement] | None = None,
    **probe_options: Any,
) -> Plan:
    """Measure the net on the cluster, fit a scaling model and choose an allocation.

    Parameters
    ----------
    net : skorch.NeuralNet
        The net to plan for (copied for the probes, never trained here).
    X, y :
        The training data (probes use a small sample of it).
    budget : Budget or dict, optional
        Limits and prices (default: this machine's cores and memory, and its GPUs, or
        the session's GPU workers when it has some).
    objective : {"throughput", "cost"}
        Maximise samples/s within the budget, or minimise the fit's cost (within the
        ``deadline``, if given).
    epochs : int, optional
        Epochs of the real fit (default: ``net.max_epochs``): with the number of samples
        it gives each candidate's fit time and cost.
    deadline : float or str, optional
        Seconds (or ``"20 minutes"``) the fit may take.
    session : ClusterSession, optional
        A running cluster to probe on; other thread counts get temporary clusters. When
        its workers are GPU workers (``sk.cluster(gpus=...)``), the GPU probes run on
        them.
    strategies : sequence of str
        Strategies to consider (default: the exact ones, ``ddp``, ``fsdp``, ``hybrid``;
        add ``"local_sgd"`` to consider the approximation).
    measurements : sequence of Measurement, optional
        Skip probing and plan from these (e.g. a previous ``plan.measurements``).
    **probe_options :
        For :func:`scalekit.planner.probe.probe`: ``workers=``, ``threads=``, ``steps=``,
        ``epochs`` is spelled ``probe_epochs=``, ``timeout=``, ``on_result=``.

    Returns
    -------
    Plan
    """
    from skorch.dataset import get_len

    from scalekit.planner.probe import data_bytes, gpu_workers

    gpu_here = gpu_workers(session.client) if session is not None else []
    if budget is None:
        budget = Budget.this_machine(gpus=len(gpu_here) if gpu_here else None)
    budget = Budget.of(budget)
    if deadline is not None and not isinstance(deadline, (int, float)):
        from dask.utils import parse_timedelta

        deadline = float(parse_timedelta(deadline))
    if measurements is None:
        from scalekit.planner.probe import probe

        options = dict(probe_options)
        if "probe_epochs" in options:
            options["epochs"] = options.pop("probe_epochs")
        options.setdefault("cores", budget.cores)
        options.setdefault("gpus", budget.gpus)
        if budget.threads:  # no probe at thread counts the budget rules out
            options.setdefault("threads", budget.threads)
        if gpu_here:  # probe GPU workers with the threads the session gave them
            options.setdefault("gpu_threads", session.client.nthreads()[gpu_here[0]])
        options.setdefault("strategies", tuple(strategies))
        measurements = probe(net, X, y, session=session, **options)
    elif probe_options:
        raise UsageError(f"probe options {sorted(probe_options)} given with measurements=; "
                         "nothing is probed")
    model = fit_scaling_model(measurements)
    epochs = epochs or getattr(net, "max_epochs", None)
    n_samples = int(get_len(X))
    nbytes = data_bytes(X) + data_bytes(y)
    solution: Solution = solve(model, budget, objective=objective, strategies=strategies,
                               epochs=epochs, n_samples=n_samples, deadline=deadline,
                               data_bytes=nbytes)
    return Plan(choice=solution.choice, candidates=solution.candidates, budget=budget,
                objective=objective, model=model, measurements=tuple(measurements),
                epochs=epochs, n_samples=n_samples, deadline=deadline, data_bytes=nbytes)


__all__ = ["Plan", "PlanError", "plan"]
