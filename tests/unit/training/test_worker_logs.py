"""A rank stopped by a peer's failure is not logged as an error on its worker."""

from __future__ import annotations

import logging

import pytest

from scalekit.training.worker_logs import expected_failure


def compute_failed(key: str) -> None:
    # what distributed.worker logs for a failed task (Worker._execute)
    logging.getLogger("distributed.worker").error(
        "Compute Failed\nKey:       %s\nState:     %s\nTask:  %s\nException: %r\n"
        "Traceback: %r\n", key, "executing", "run_rank(...)", "PeerLost('...')", "...")


def test_an_expected_failure_is_logged_at_debug_once_and_others_as_errors(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        expected_failure("scalekit-rank-r1-g0-r2")
        compute_failed("scalekit-rank-r1-g0-r2")
        compute_failed("scalekit-rank-r1-g0-r0")  # not marked: a real failure
        compute_failed("scalekit-rank-r1-g0-r2")  # the mark was for one failure
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.args[0] for r in errors] == ["scalekit-rank-r1-g0-r0", "scalekit-rank-r1-g0-r2"]
    quiet = [r for r in caplog.records if r.name == "scalekit.training.worker_logs"]
    assert len(quiet) == 1 and quiet[0].levelno == logging.DEBUG
    assert "scalekit-rank-r1-g0-r2" in quiet[0].getMessage()
