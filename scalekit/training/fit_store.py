"""Where one fit's checkpoints go, and reading them back (at resume, after a failure)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scalekit.config import CheckpointConfig, TrainConfig
from scalekit.errors import UsageError
from scalekit.training.checkpoint import CheckpointStore

logger = logging.getLogger(__name__)


class FitCheckpoints:
    """The checkpoint folder of one fit.

    Parameters
    ----------
    requested : str, CheckpointStore, None or False
        ``sk.fit``'s ``checkpoint=``: a URL or store, ``None`` for a fresh folder per
        run (removed once the fit succeeded), ``False`` for none at all.
    resume : bool
        Continue from the newest checkpoint there.
    config : CheckpointConfig
    run_id : str
    """

    def __init__(self, requested: str | CheckpointStore | bool | None, *, resume: bool,
                 config: CheckpointConfig, run_id: str) -> None:
        self.requested = requested
        self.resume = resume
        self.config = config
        self.run_id = run_id
        self.store: CheckpointStore | None = None

    def open(self, workers_in_process: Callable[[], bool]) -> CheckpointStore | None:
        """Open (and create) the folder; refuse what cannot work, changing nothing."""
        requested = self.requested
        if requested is False:
            if self.resume:
                raise UsageError("resume=True needs a checkpoint folder, not checkpoint=False")
            return None  # no checkpoints: a failure restarts from the last resize or start
        if isinstance(requested, str) and requested.startswith("memory://") \
                and not workers_in_process():
            raise UsageError(
                "memory:// checkpoints live in one process, but the workers run in their own "
                "processes and could not share them; use a folder or an s3:// / gs:// URL"
            )
        if isinstance(requested, CheckpointStore):
            store = requested
        else:
            url = requested or self.config.default_url(self.run_id)
            store = CheckpointStore(url, keep=self.config.keep)
        if not self.resume and store.exists():
            raise UsageError(
                f"{store.url} already holds checkpoints of an earlier fit; pass resume=True "
                "to continue it, or choose another checkpoint folder (nothing was changed)"
            )
        self.store = store
        return store

    def load(self, *, required: bool) -> dict[str, Any] | None:
        """The newest checkpoint that loads (falling back past damaged ones), or
        ``None`` when there is none and none is ``required``."""
        if self.store is None:
            return None
        if not self.store.exists():
            if required:
                raise UsageError(f"resume=True but {self.store.url} holds no checkpoint")
            return None
        state, _ = self.store.load_latest()
        return state

    def after_failure(self) -> dict[str, Any] | None:
        """The newest checkpoint after a failed round, whose writers have all ended
        (their temporary files are orphans now: removed first)."""
        if self.store is not None:
            # during a round, pruning spares fresh temporaries: they may be a live writer's
            try:
                self.store.prune_temporaries(grace_s=0.0)
            except Exception:
                logger.debug("could not prune %s", self.store.url, exc_info=True)
        # load_latest falls back past any checkpoint that fails to load (damaged, pruned
        # under a stale listing, refused); only when none loads does it raise
        return self.load(required=False)

    def drop_default(self) -> None:
        """A run that named no checkpoint folder leaves none behind once it succeeded."""
        if self.requested is not None or self.store is None:  # named, or none at all
            return
        try:
            self.store.fs.rm(self.store.root, recursive=True)
        except (FileNotFoundError, OSError):
            logger.debug("could not remove %s", self.store.url, exc_info=True)


def run_config(net: Any, *, max_epochs: int, strategy: str, config: TrainConfig,
               checkpoint: CheckpointConfig) -> dict[str, Any]:
    """What a checkpoint records about the run that wrote it."""
    import dataclasses

    from scalekit.training.preflight import batch_size

    return {
        "net": type(net).__name__,
        "module": getattr(net.module, "__name__", type(net.module).__name__),
        "max_epochs": max_epochs, "batch_size": batch_size(net),
        "lr": float(getattr(net, "lr", 0.0)), "strategy": strategy,
        "training": dataclasses.asdict(config),
        "checkpoint": dataclasses.asdict(checkpoint),
    }
