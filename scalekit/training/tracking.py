"""Experiment trackers under ``sk.fit``: TensorBoard's writer travels as a recipe, MLflow's
run must be known in the notebook, and both must be reachable from rank 0.

A ``torch.utils.tensorboard.SummaryWriter`` holds an open file and a writer thread: it
cannot be pickled to the workers. skorch users create one in the notebook and hand it
to ``TensorBoard(writer)``; :func:`dumps_by_value` ships it as its recipe (the log
folder, made absolute in the notebook, and its options), and rank 0 opens a writer on the
same folder when it first logs (:class:`RankZeroWriter`). TensorBoard shows every events
file of one folder as one run.

skorch's ``MlflowLogger`` finds its run in ``initialize`` (``mlflow.active_run()``, a
per-thread value); the notebook initializes the net, so the run and the client travel to
rank 0 with it, and rank 0 logs to the same run.
"""

from __future__ import annotations

import io
import os
from typing import Any

from scalekit.errors import UsageError

# SummaryWriter options that a writer on rank 0 keeps (purge_step is left out on
# purpose: a round must never hide what an earlier round logged)
WRITER_OPTIONS = ("max_queue", "flush_secs", "filename_suffix")


class CallbackTargetError(UsageError):
    """A side-effect callback cannot write where it was pointed (checked on rank 0
    before training)."""


class RankZeroWriter:
    """A ``SummaryWriter`` on ``log_dir``, opened on first use (on rank 0; ranks that do
    not log never open one). Anything else is the SummaryWriter's own API."""

    def __init__(self, log_dir: str, options: dict[str, Any] | None = None) -> None:
        self.__dict__["log_dir"] = log_dir
        self.__dict__["options"] = dict(options or {})
        self.__dict__["_writer"] = None

    @property
    def opened(self) -> bool:
        return self._writer is not None

    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.__dict__["_writer"] = SummaryWriter(log_dir=self.log_dir, **self.options)
        return self._writer

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe dunders: open nothing
            raise AttributeError(name)
        return getattr(self.writer(), name)

    def get_logdir(self) -> str:
        return self.log_dir

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the writer if one was opened (closing never opens one); a later use
        opens a new events file in the same folder."""
        writer, self.__dict__["_writer"] = self._writer, None
        if writer is not None:
            writer.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (RankZeroWriter, (self.log_dir, self.options))

    def __repr__(self) -> str:
        return f"RankZeroWriter({self.log_dir!r})"


def _writer_recipe(writer: Any) -> tuple[Any, ...]:
    log_dir = os.path.abspath(writer.get_logdir())  # the notebook's folder, not a worker's
    options = {k: getattr(writer, k) for k in WRITER_OPTIONS if hasattr(writer, k)}
    return (RankZeroWriter, (log_dir, options))


def _is_summary_writer(obj: Any) -> bool:
    cls = type(obj)
    return cls.__name__ == "SummaryWriter" and cls.__module__.startswith(
        ("torch.utils.tensorboard", "tensorboardX"))


def dumps_by_value(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)`` that ships TensorBoard writers as their recipe."""
    import cloudpickle

    class Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, value: Any) -> Any:
            if _is_summary_writer(value):
                return _writer_recipe(value)
            return super().reducer_override(value)

    buffer = io.BytesIO()
    Pickler(buffer).dump(obj)
    return buffer.getvalue()


def writers_of(callback: Any) -> list[RankZeroWriter]:
    """The TensorBoard writers a callback holds (directly as an attribute)."""
    return [v for v in vars(callback).values() if isinstance(v, RankZeroWriter)]


def check_mlflow_run(name: str, callback: Any) -> None:
    """In the notebook, after ``initialize``: an ``MlflowLogger`` must have found a run."""
    if type(callback).__name__ == "MlflowLogger" or any(
            c.__name__ == "MlflowLogger" for c in type(callback).__mro__):
        if getattr(callback, "run_", None) is None:
            raise UsageError(
                f"callback {name!r} (MlflowLogger) has no MLflow run: mlflow.active_run() "
                "was None where the net was initialized (an active run belongs to the thread "
                "that started it, and sk.fit(wait=False) initializes in a thread of its own). "
                "Pass the run: MlflowLogger(run=mlflow.active_run()) inside "
                "`with mlflow.start_run():`, or call sk.fit there with wait=True.")


def check_targets(name: str, callback: Any, where: str) -> None:
    """On rank 0, before training: the folders and stores a side-effect callback writes
    to can be written from here; else a :class:`CallbackTargetError` saying so."""
    label = f"callback {name!r} ({type(callback).__name__})"
    for folder in _folders_of(callback):
        try:
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, f".scalekit-write-test-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"")
            os.remove(probe)
        except OSError as exc:
            raise CallbackTargetError(
                f"{label} cannot write to {folder!r} on rank 0's worker {where}: "
                f"{type(exc).__name__}: {exc}. Side-effect callbacks run on rank 0, which "
                "may be any worker: point them at a folder every worker can write and the "
                "notebook can read (on a local cluster any folder of this machine; on "
                "Kubernetes a volume mounted in the worker pods and the notebook, see "
                "docs/callbacks.md)") from exc
    client, run = getattr(callback, "client_", None), getattr(callback, "run_", None)
    if client is not None and run is not None and hasattr(client, "get_run"):
        try:
            client.get_run(run.info.run_id)
        except Exception as exc:  # MLflow's own errors say what is wrong
            raise CallbackTargetError(
                f"{label} cannot reach its MLflow run {run.info.run_id} from rank 0's worker "
                f"{where}: {type(exc).__name__}: {exc}. The workers need the tracking store "
                "too: a tracking server (http://...), or a folder they share, with "
                "MLFLOW_ALLOW_FILE_STORE=true in their environment for a file store "
                "(set it before the cluster starts: workers inherit the environment)"
            ) from exc


def _folders_of(callback: Any) -> list[str]:
    folders = []
    for holder in (callback, getattr(callback, "checkpoint_", None)):
        dirname = getattr(holder, "dirname", None) if holder is not None else None
        if isinstance(dirname, str) and dirname and "://" not in dirname:
            folders.append(dirname)
    folders += [w.log_dir for w in writers_of(callback)]
    return sorted(set(folders))


def resolve_folders(callback: Any, cwd: str) -> None:
    """Make a side-effect callback's relative folders absolute against the notebook's
    working directory ``cwd`` (a worker's may differ: a background cluster's does)."""
    if not cwd:
        return
    for holder in (callback, getattr(callback, "checkpoint_", None)):
        dirname = getattr(holder, "dirname", None) if holder is not None else None
        if isinstance(dirname, str) and "://" not in dirname and not os.path.isabs(dirname):
            if dirname or _writes_named_files(holder):
                vars(holder)["dirname"] = os.path.join(cwd, dirname) if dirname else cwd


def _writes_named_files(holder: Any) -> bool:
    """A checkpoint with dirname='' writes its f_* names relative to the working folder
    (only when they are strings: file objects need dirname='')."""
    names = [getattr(holder, k) for k in dir(holder) if k.startswith("f_") and k != "f_history_"]
    return any(isinstance(v, str) for v in names) and not any(
        v is not None and not isinstance(v, str) for v in names)


__all__ = ["CallbackTargetError", "RankZeroWriter", "check_mlflow_run", "check_targets",
           "dumps_by_value", "resolve_folders", "writers_of"]
