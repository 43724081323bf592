"""An S3-protocol server on loopback for tests and benchmarks: moto's, in a thread."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from moto.server import ThreadedMotoServer

ACCESS_KEY = "forgeline-test"
SECRET_KEY = "forgeline-test-secret"


@dataclass
class S3Server:
    """A running moto S3 server on 127.0.0.1."""

    server: ThreadedMotoServer
    port: int

    @classmethod
    def start(cls, port: int = 0) -> S3Server:
        """Start on `port` (0: a free one)."""
        os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        return cls(server, server.get_host_and_port()[1])

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, bucket: str) -> dict[str, str]:
        """Registry settings for a bucket on this server."""
        return {
            "FORGELINE_REGISTRY_STORAGE": "s3",
            "FORGELINE_REGISTRY_S3_ENDPOINT": self.endpoint,
            "FORGELINE_REGISTRY_S3_ACCESS_KEY": ACCESS_KEY,
            "FORGELINE_REGISTRY_S3_SECRET_KEY": SECRET_KEY,
            "FORGELINE_REGISTRY_S3_BUCKET": bucket,
        }

    def stop(self) -> None:
        """Stop serving and close the listening socket (connections are then refused)."""
        self.server.stop()
        inner = self.server._server
        if inner is not None:
            inner.server_close()

    def restart(self) -> S3Server:
        """A new server on the same port; moto keeps its buckets in-process, so data survives."""
        return S3Server.start(self.port)
