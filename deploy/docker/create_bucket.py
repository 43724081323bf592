"""Create the registry's bucket in MinIO (compose's one-shot ``minio-init`` service).

Reads FORGELINE_BUCKET_ENDPOINT (host:port), FORGELINE_BUCKET_ACCESS_KEY,
FORGELINE_BUCKET_SECRET_KEY, FORGELINE_BUCKET_NAME and optionally FORGELINE_BUCKET_SECURE
(true/false). Exits 0 once the bucket exists (created now or before), 1 if the store never
answered within the deadline. The registry also creates a missing bucket, but creating it here
first makes "MinIO is ready for the registry" one visible step of `docker compose up`.
"""

from __future__ import annotations

import os
import sys
import time

from minio import Minio
from minio.error import S3Error

DEADLINE_SECONDS = 60.0
RETRY_SECONDS = 1.0


def main() -> int:
    """Create the bucket, retrying while the store is not answering yet."""
    client = Minio(
        os.environ["FORGELINE_BUCKET_ENDPOINT"],
        access_key=os.environ["FORGELINE_BUCKET_ACCESS_KEY"],
        secret_key=os.environ["FORGELINE_BUCKET_SECRET_KEY"],
        secure=os.environ.get("FORGELINE_BUCKET_SECURE", "false").lower() == "true",
    )
    bucket = os.environ.get("FORGELINE_BUCKET_NAME", "forgeline")
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            if client.bucket_exists(bucket):
                print(f"bucket {bucket} exists")
            else:
                client.make_bucket(bucket)
                print(f"bucket {bucket} created")
            return 0
        except (S3Error, OSError) as error:
            if time.monotonic() > deadline:
                print(f"could not create bucket {bucket}: {error}", file=sys.stderr)
                return 1
            time.sleep(RETRY_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
