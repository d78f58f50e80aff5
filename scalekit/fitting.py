"""``scalekit.fit`` and ``scalekit.train``: distributed training from the notebook.

A :class:`TrainingRun` ties a :class:`~scalekit.training.controller.TrainingController`
to an event bus and, as the last expression of a cell, shows the live training panel.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

from scalekit.config import TrainConfig
from scalekit.errors import TrainingError, UsageError
from scalekit.events import Event, EventBus, LogLine, Notice, RunFinished
from scalekit.session import ClusterSession, current_session
from scalekit.views.shown import ShownAsPanel

if TYPE_CHECKING:
    from distributed import Client

    from scalekit.remote_runs import AttachedRun
    from scalekit.widgets.training_panel import TrainingPanel

logger = logging.getLogger(__name__)


class TrainingRun(ShownAsPanel):
    """One distributed fit: its progress events, its outcome and its panel.

    Attributes
    ----------
    net : skorch.NeuralNet
        The user's net; fitted once the run has finished.
    bus : EventBus
        Progress events (``RunStarted``, ``BatchProgress``, ``EpochEnded``, ...).
    events : list of Event
        Every training event so far, in order.
    error : BaseException or None
        Why the run failed, if it did.
    """

    def __init__(self, controller: Any, *, bus: EventBus,
                 session: ClusterSession | None = None) -> None:
        self.controller = controller
        self.session = session
        self.net = controller.net
        self.pipeline: Any = None  # the user's Pipeline, when one was given (see fit)
        self.bus = bus
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._panel: TrainingPanel | None = None
        self._unsubscribe = bus.subscribe(self._record, replay=False)

    @property
    def run_id(self) -> str:
        return self.controller.run_id

    @property
    def history(self) -> Any:
        """The net's skorch history (one row per epoch)."""
        return self.net.history

    @property
    def log(self) -> list[str]:
        """What rank 0 printed during the fit (skorch's ``PrintLog`` rows, ...), line by
        line: the same lines a foreground fit prints in the cell."""
        return [line for e in list(self.events) if isinstance(e, LogLine) for line in e.lines]

    @property
    def report(self) -> Any:
        """Memory and throughput per rank (a ``TrainingReport``), once finished."""
        from scalekit.events import TrainingReport

        found = [e for e in self.events if isinstance(e, TrainingReport)]
        return found[-1] if found else None

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``cancelled`` or ``failed``."""
        if not self._done.is_set():
            return "running"
        if isinstance(self.error, KeyboardInterrupt):
            return "cancelled"
        return "failed" if self.error is not None else "finished"

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # -- running -------------------------------------------------------------------------
    def _run(self) -> None:
        if self.session is not None:
            self.session.attach_training(self.controller)
        try:
            self.controller.fit()
            if self.pipeline is not None:
                _fitted_steps(self.pipeline, self.controller)
        except BaseException as exc:  # kept for wait(); the notebook thread re-raises it
            self.error = exc
        finally:
            if self.session is not None:
                self.session.detach_training(self.controller)
            self._done.set()

    def start(self, *, background: bool) -> TrainingRun:
        if background:
            self._thread = threading.Thread(
                target=self._run, name=f"scalekit-run-{self.run_id}", daemon=True
            )
            self._thread.start()
        else:
            self._run()
        return self

    @property
    def estimator(self) -> Any:
        """What was fitted: the Pipeline when ``sk.fit`` was given one, else the net."""
        return self.pipeline if self.pipeline is not None else self.net

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the run ends; return the fitted net (or pipeline) or raise its
        error."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.run_id} still running after {timeout:g}s")
        if self.error is not None:
            raise self.error
        return self.estimator

    result = wait

    def cancel(self) -> None:
        """Stop a running fit now; its ranks are ended and ``wait()`` raises."""
        self.controller.cancel()

    # -- display -----------------------------------------------------------------------
    def _record(self, event: Event) -> None:
        # this run's events, and notices (e.g. "waiting for workers") while it runs
        if getattr(event, "run_id", None) == self.run_id or isinstance(event, Notice):
            self.events.append(event)
        if isinstance(event, RunFinished) and event.run_id == self.run_id:
            self._unsubscribe()

    @property
    def panel(self) -> TrainingPanel:
        """The live training panel (created on first use)."""
        if self._panel is None:
            from scalekit.widgets.training_panel import TrainingPanel

            self._panel = TrainingPanel(self.bus, run_id=self.run_id, events=self.events)
        return self._panel

    def __repr__(self) -> str:
        from scalekit.views.training_render import training_text

        return training_text(self.events)


def fit(
    net: Any,
    X: Any,
    y: Any = None,
    *,
    cluster: ClusterSession | Client | None = None,
    checkpoint: str | bool | None = None,
    resume: bool = False,
    wait: bool = True,
    show: bool = True,
    seed: int | None = None,
    max_workers: int | None = None,
    strategy: Any = "ddp",
    precision: str | None = None,
    data_on_device: bool | str | None = None,
    sampling: str | None = None,
    detach: bool | None = None,
    **fit_params: Any,
) -> TrainingRun | AttachedRun:
    """Fit a skorch net across the cluster's workers (synchronous data parallel).

    The net keeps skorch's meaning of its settings. ``batch_size`` is the **global**
    batch: each of the ``W`` workers computes ``batch_size / W`` samples per step and
    the gradients are averaged, so every step is the same SGD step a single process
    would take, and the learning rate needs no change when the world size changes.

    Parameters
    ----------
    net : skorch.NeuralNet or sklearn.pipeline.Pipeline
        Any skorch net (``NeuralNetClassifier``, ``NeuralNetRegressor``, ...). After
        the call it is an ordinary fitted net: ``net.module_``, ``net.history``,
        ``predict``, ``score`` and ``save_params`` work in the notebook. Or a Pipeline
        whose last step is such a net: its transformers are fitted where the data is
        (in the notebook for in-memory data, partition-wise on the cluster for sharded
        data), the net is trained distributed, and the pipeline comes back fitted
        (``run.estimator``, ``run.wait()``).
    X, y :
        Training data. In-memory data (arrays, tensors, what skorch accepts) is sent to
        every worker whole, once (the exact path). A sharded source
        (``sk.data.parquet``, ``sk.data.npy``) or Dask collections are dealt to the
        ranks as shards and never pass through the notebook (see ``sampling`` and
        docs/data.md).
    cluster : ClusterSession or distributed.Client, optional
        Where to train; by default the current scalekit cluster
        (:func:`scalekit.session.current_session`: the newest one started, which
        ``%scalekit`` and the JupyterLab sidebar act on too).
    checkpoint : str or False, optional
        Folder URL (local path, ``s3://...``, any fsspec URL) for checkpoints. By default
        each run gets a fresh folder under ``scalekit.checkpoint.root``, removed once the
        fit succeeded. ``False`` turns checkpoints off (a failure then restarts from the
        last resize, or from the start).
    resume : bool
        Continue the fit saved at ``checkpoint`` (e.g. after a kernel restart) up to the
        net's ``max_epochs``, with the saved optimizer state and history.
    wait : bool
        Block until training ends (default). With ``wait=False`` the call returns at
        once and training goes on in the background; ``run.wait()`` joins it.
    show : bool
        Display the live training panel in the notebook.
    seed : int, optional
        Seeds the batch order and the ranks' RNGs (default: ``scalekit.training.seed``).
    max_workers : int, optional
        Largest world size to train on (default: every worker of the cluster).
    strategy : {"ddp", "fsdp", "hybrid", "local_sgd"} or a strategy object
        How the model is spread over the workers (see ``scalekit.strategies``):
        ``sk.strategies.FSDP(wrap=("Linear",))``, ``sk.strategies.Hybrid(shard_size=2)``,
        ``sk.strategies.LocalSGD(sync_every=8)``. After the fit the net holds the full,
        unsharded weights whatever the strategy.
    precision : {"32", "bf16", "fp16"}, optional
        Mixed precision: the forward pass and the loss run under ``torch.autocast`` in
        bf16 or fp16 (fp16 with loss scaling, on GPUs only); sharded strategies gather
        parameters in it and reduce gradients in float32. Weights, optimizer state and
        checkpoints stay float32. Default: ``scalekit.training.precision`` ("32").
    data_on_device : bool or "auto", optional
        A cuda net's ranks keep the training set on their GPU ("auto": when it takes at
        most a quarter of the GPU's free memory) instead of copying each batch there.
        Default: ``scalekit.training.data-on-device``.
    sampling : {"exact", "sharded"}, optional
        ``exact``: every step is the single-process step (world-size independent batch
        order; every rank can read every sample). ``sharded``: each epoch a seeded
        deal of shards to ranks, a shuffle window inside each rank, global batch = W x
        local batch. Default: exact for in-memory data, sharded for sources and Dask
        collections (``exact`` with Dask collections computes and replicates them).
    detach : bool
        Run the fit on the cluster, not in this kernel: it goes on when the notebook
        closes or the kernel restarts, and any kernel follows it with
        ``sk.attach(run.run_id)`` (``sk.runs()`` lists the runs). The call returns at
        once with an :class:`~scalekit.remote_runs.AttachedRun`; ``net = run.wait()``
        fetches the fitted net. Needs a cluster that outlives the kernel (``scalekit
        cluster up`` + ``sk.cluster(connect="local")``, or a kept Kubernetes cluster).
        In-memory data and Dask collections with ``sampling="exact"`` only, for now:
        sharded sources and Pipelines are refused with ``detach``.
    **fit_params :
        Passed on to the net's ``fit`` loop on every worker.

    Notes
    -----
    skorch callbacks run where docs/callbacks.md says: those that decide the training
    (scoring, ``EarlyStopping``, LR schedulers) on every rank, those with side effects
    (``PrintLog``, ``Checkpoint``, ``TensorBoard``, ``MlflowLogger``, ...) on rank 0 only,
    ``LoadInitState`` once in the notebook. What rank 0 prints (the epoch table of a net
    with ``verbose=1``) is printed once in the cell of a foreground fit, and is in
    ``run.log`` and the panel either way.

    Returns
    -------
    TrainingRun
        Shows the training panel; ``run.net`` is the fitted net (with ``detach``: an
        ``AttachedRun``, whose ``wait()`` returns it).
    """
    from scalekit.data.inputs import resolve_sampling
    from scalekit.data.pipeline import fit_in_memory, is_pipeline, split_pipeline
    from scalekit.training.controller import TrainingController

    session = _session_for(cluster)
    client = session.client if session is not None else _client_for(cluster)
    config = TrainConfig.from_config(seed=seed, precision=precision,
                                     data_on_device=data_on_device)
    if detach is None:  # `scalekit run --detach` sets it for a script's fits
        import dask.config

        detach = bool(dask.config.get("scalekit.training.detach", default=False))
    if detach:
        _check_detachable_data(net, X, y, sampling)
        return _detached(client, session, net, X, y, config=config, show=show,
                         options={"checkpoint": checkpoint, "resume": resume,
                                  "max_world": max_workers, "strategy": strategy,
                                  "fit_params": fit_params})
    bus = session.bus if session is not None else EventBus()
    pipeline, transformers = None, None
    if is_pipeline(net):
        pipeline = net
        transformers, net = split_pipeline(pipeline)
        sampling, X = resolve_sampling(X, y, sampling)
        if transformers is not None and sampling == "exact":
            X = fit_in_memory(transformers, _computed(X), _computed(y))  # in the notebook
            y = _computed(y)
            transformers = None
    controller = TrainingController(
        client, net, X, y, bus=bus, config=config, fit_params=fit_params,
        checkpoint=checkpoint, resume=resume, max_world=max_workers,
        scale_to=session.backend.resize if session is not None else None,
        strategy=strategy, sampling=sampling, transformers=transformers,
        echo=_print_line if wait else None,
    )
    from scalekit.remote_runs import RunRecorder
    from scalekit.training.run_registry import owner

    RunRecorder(client, controller, bus, owner())  # other kernels and the CLI see it
    run = TrainingRun(controller, bus=bus, session=session)
    run.pipeline = pipeline
    if show:
        _display(run)
    run.start(background=not wait)
    if wait and run.error is not None:
        raise run.error
    return run


def _check_detachable_data(net: Any, X: Any, y: Any, sampling: str | None) -> None:
    """Detached fits take the exact path with a plain net (what the cluster-side
    controller has been tested with); say so before anything is sent."""
    from scalekit.data.inputs import resolve_sampling
    from scalekit.data.pipeline import is_pipeline

    if is_pipeline(net):
        raise UsageError("sk.fit(detach=True) trains a skorch net, not a Pipeline: fit the "
                         "pipeline attached (detach=False), or fit its transformers first "
                         "and detach the net")
    if resolve_sampling(X, y, sampling)[0] == "sharded":
        raise UsageError("sk.fit(detach=True) does not take sharded data yet (sk.data "
                         "sources, Dask collections without sampling='exact'): fit it "
                         "attached (detach=False), or pass sampling='exact' for Dask "
                         "collections that fit in one worker's memory")


def _detached(client: Any, session: ClusterSession | None, net: Any, X: Any, y: Any, *,
              config: TrainConfig, show: bool, options: dict[str, Any]) -> AttachedRun:
    """Check here, then start the fit on the cluster (see ``detach`` in :func:`fit`)."""
    import uuid

    from scalekit.config import CheckpointConfig
    from scalekit.remote_runs import AttachedRun, check_detachable, submit
    from scalekit.training.preflight import check_net, checked_fit_arguments, preflight
    from scalekit.training.run_registry import owner
    from scalekit.training.strategies import resolve

    if session is not None:
        check_detachable(session)
    checkpoint, _, _ = checked_fit_arguments(options["checkpoint"], options["resume"],
                                             options["max_world"])
    resolve(options["strategy"])
    check_net(net)
    probe = net if getattr(net, "initialized_", False) else net.initialize()
    preflight(probe, X, y)  # fail here, at once, not on the cluster
    run_id = uuid.uuid4().hex[:8]
    url = checkpoint if isinstance(checkpoint, str) else None
    submit(client, net, X, y, run_id=run_id, owner=owner(), config=config,
           checkpoint_config=CheckpointConfig.from_config(), options=options,
           checkpoint_url=url)
    run = AttachedRun(client, run_id, owner=owner())
    if show:
        _display(run)
    return run


def train(
    module: Any,
    dataset: Any,
    *,
    criterion: Any,
    optimizer: Any = None,
    lr: float = 0.01,
    max_epochs: int = 10,
    batch_size: int = 128,
    cluster: ClusterSession | Client | None = None,
    show: bool = True,
    seed: int | None = None,
    **net_params: Any,
) -> Any:
    """Train a plain torch module on a torch Dataset across the cluster; return it.

    The same runtime as :func:`fit`, for users without skorch.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        The model (a class is instantiated with ``module__*`` keyword arguments).
    dataset : torch.utils.data.Dataset
        Yields ``(x, y)`` pairs; it must be picklable (it is sent to the workers).
    criterion : loss class or instance, e.g. ``torch.nn.CrossEntropyLoss``
    optimizer : optimizer class, default ``torch.optim.SGD``
    lr, max_epochs, batch_size :
        As in skorch; ``batch_size`` is the global batch (see :func:`fit`).
    **net_params :
        Further skorch-style parameters (``optimizer__momentum=0.9``, ``module__h=64``).

    Returns
    -------
    torch.nn.Module
        The trained module.
    """
    import torch
    from skorch import NeuralNet

    net = NeuralNet(
        module, criterion=criterion, optimizer=optimizer or torch.optim.SGD, lr=lr,
        max_epochs=max_epochs, batch_size=batch_size, train_split=None, verbose=0,
        **net_params,
    )
    run = fit(net, dataset, None, cluster=cluster, show=show, seed=seed)
    return run.net.module_


def _computed(data: Any) -> Any:
    """In-memory data as it is; a Dask collection (``sampling="exact"``) computed."""
    from dask import is_dask_collection

    return data.compute() if is_dask_collection(data) else data


def _fitted_steps(pipeline: Any, controller: Any) -> None:
    """Put the transformers fitted on the cluster into the user's pipeline (those fitted
    in the notebook are its own objects already)."""
    fitted = getattr(controller.data, "transform", None)
    if fitted is not None:
        pipeline.steps[:-1] = list(fitted.steps)


def _session_for(cluster: ClusterSession | Client | None) -> ClusterSession | None:
    if cluster is None:
        session = current_session()  # the one %scalekit and the sidebar act on too
        if session is None:
            raise UsageError(
                "no cluster to train on: start one first with `sk.cluster(workers=2)` or "
                "`%scalekit up`, or pass cluster=<session or distributed.Client>"
            )
        return session
    if isinstance(cluster, ClusterSession):
        if cluster.closed:
            raise UsageError("that cluster is closed; start a new one with sk.cluster()")
        return cluster
    return None


def _client_for(cluster: Any) -> Client:
    if hasattr(cluster, "submit") and hasattr(cluster, "nthreads"):
        return cluster
    raise UsageError(
        f"cluster must be a scalekit ClusterSession or a distributed.Client, "
        f"got {type(cluster).__name__}"
    )


def _print_line(stream: str, text: str) -> None:
    """Rank 0's printed lines, in the cell that runs the fit: the controller calls this
    from that cell's thread, so Jupyter shows them there (not in the cell that started
    Dask's event loop)."""
    out = sys.stderr if stream == "stderr" else sys.stdout
    print(text, file=out, flush=True)


def _display(run: TrainingRun) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        display(run)


__all__ = ["TrainingRun", "fit", "train", "TrainingError"]
