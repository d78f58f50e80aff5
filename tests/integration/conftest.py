"""Fixtures of the integration tests (the process-leak check is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from s3_server import S3Server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 with one bucket, for the whole session."""
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()
