"""The epoch log's columns: which row keys are losses, scores and table columns.

A mixin of :class:`~scalekit.views.training_state.TrainingState` (``rows`` and
``numeric_keys`` are its fields), apart so that the fold stays one room.
"""

from __future__ import annotations

from typing import Any

from scalekit.views.fmt import is_number

__all__ = ["NOT_SCORES", "EpochColumns"]

# Row keys that are not scores: drawn elsewhere (throughput, duration) or not at all.
NOT_SCORES = frozenset({"epoch", "dur", "batches", "train_samples_per_s"})


def _shown_key(key: str) -> bool:
    """skorch's ``filter_log_keys``: no ``*_best``, ``*_batch_count`` or ``event_*``."""
    return not (
        key in NOT_SCORES
        or key.endswith(("_best", "_batch_count"))
        or key.startswith("event_")
    )


class EpochColumns:
    """Losses, scores and table columns of the epoch rows."""

    rows: list[dict[str, Any]]
    numeric_keys: dict[str, None]

    def _keys(self) -> list[str]:
        return [k for k in self.numeric_keys if _shown_key(k)]

    @property
    def loss_keys(self) -> list[str]:
        """Row keys ending in ``_loss`` (train first, then valid, then the rest)."""
        keys = [k for k in self._keys() if k.endswith("_loss")]
        order = {"train_loss": 0, "valid_loss": 1}
        return sorted(keys, key=lambda k: (order.get(k, 2), k))

    @property
    def score_keys(self) -> list[str]:
        """Other numeric scores in the rows (``valid_acc``, ...), sorted."""
        return sorted(k for k in self._keys() if not k.endswith("_loss"))

    @property
    def table_keys(self) -> list[str]:
        """Columns as skorch's ``PrintLog`` orders them: epoch, sorted keys, dur."""
        keys = ["epoch", *sorted(self._keys())]
        keys += sorted(k for k in self.numeric_keys if k.startswith("event_"))
        if "dur" in self.numeric_keys:
            keys.append("dur")
        return keys

    def series(self, key: str) -> list[float | None]:
        """``key``'s value in each row (``None`` where a row lacks it)."""
        return [float(r[key]) if is_number(r.get(key)) else None for r in self.rows]

    @staticmethod
    def is_best(row: dict[str, Any], key: str) -> bool:
        """Whether ``row`` marks ``key`` as the best so far (skorch's ``<key>_best``)."""
        return bool(row.get(f"{key}_best"))
