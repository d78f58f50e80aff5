"""Quiet workers: a rank that stopped only because a peer went away is no news.

When one rank of a round is lost, the others fail their next collective (``PeerLost``,
gloo's connection errors) and their Dask tasks end with that error, which the controller
expects: it is how a round learns to recover. Dask's worker logs every failed task at
ERROR with its traceback ("Compute Failed"), and a local cluster's workers write to the
notebook's stderr: several kilobytes of red text during a graceful recovery, which the
training panel already tells as one failure and one recovery.

:func:`expected_failure` marks the current task's failure as expected; a filter on
``distributed.worker`` then logs it at DEBUG (on ``scalekit.training.worker_logs``)
instead. Every other failure is logged as Dask logs it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

_EXPECTED: set[Any] = set()  # task keys whose failure is expected
_LOCK = threading.Lock()
_INSTALLED = False


class _ExpectedFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed") or not record.args:
            return True
        key = record.args[0] if isinstance(record.args, tuple) else None
        with _LOCK:
            if key not in _EXPECTED:
                return True
            _EXPECTED.discard(key)
        logger.debug("rank task %s stopped for a peer's failure: %s", key,
                     record.args[3] if len(record.args) > 3 else "")
        return False


def expected_failure(key: Any) -> None:
    """The task ``key`` is about to fail in a way its controller expects: do not log it
    as an error on this worker."""
    global _INSTALLED
    with _LOCK:
        _EXPECTED.add(key)
        if not _INSTALLED:
            logging.getLogger("distributed.worker").addFilter(_ExpectedFailures())
            _INSTALLED = True
