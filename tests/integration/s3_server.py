"""A real S3 API for the tests: moto's server on 127.0.0.1, reached through s3fs.

:class:`S3Server` starts ``moto.server.ThreadedMotoServer`` on an OS-chosen loopback port
(a thread of the test process: nothing else to clean up than the server itself), creates
one bucket, and says how a user would point scalekit at it: ``storage_options`` for an
explicit :class:`~scalekit.training.checkpoint.CheckpointStore`, or the environment
variables botocore reads (which Dask worker processes inherit when they start after
them). The credentials are moto's dummies; nothing leaves the machine.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

REGION = "us-east-1"
KEY = "scalekit-test-key"
SECRET = "scalekit-test-secret"


class S3Server:
    """A moto S3 server with one bucket; call :meth:`stop` when done."""

    def __init__(self, bucket: str = "scalekit-tests") -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.bucket = bucket
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                              aws_access_key_id=KEY, aws_secret_access_key=SECRET)
        client.create_bucket(Bucket=bucket)
        client.close()

    @property
    def storage_options(self) -> dict[str, Any]:
        """What ``CheckpointStore(url, storage_options=...)`` takes (s3fs's keywords)."""
        return {"key": KEY, "secret": SECRET,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION}}

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that make a plain ``s3://`` URL reach this server."""
        return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_DEFAULT_REGION": REGION}

    def url(self, name: str = "run") -> str:
        """A fresh folder URL in the bucket."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex[:12]}/{name}"

    def stop(self) -> None:
        self._server.stop()
