"""Push and pull of one large artifact through the registry, against the raw `minio` SDK
(``fput_object`` / ``fget_object``) on the same S3 server, in one run.

    .venv/bin/python benchmarks/registry_transfer.py --size-mib 2048

Every side runs in its own process so that peak RSS is its own: the S3 server (moto's, or
MinIO's when MINIO_ENDPOINT is set), the registry (``python -m forgeline_registry`` on the s3
driver), and each client phase. A push through the registry is: hash the file, BeginVersion,
upload the parts straight to the store with presigned URLs, CommitVersion (which reads the blob
back and hashes it before the manifest is written). A pull is: GetDownloadGrants, then a
presigned GET hashed on the way, the file appearing only once verified. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ACCESS_KEY = "forgeline-bench"
SECRET_KEY = "forgeline-bench-secret"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_port(port: int, process: subprocess.Popen[bytes], deadline_s: float = 60.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)  # polling a real signal: the port accepting connections
    raise SystemExit(f"nothing listens on {port} after {deadline_s} s")


# --- client phases, each run as `benchmarks/registry_transfer.py --phase NAME ...`


def _minio_client(endpoint: str, access: str, secret: str) -> Any:
    from minio import Minio

    return Minio(endpoint, access_key=access, secret_key=secret, secure=False)


def phase(args: argparse.Namespace) -> dict[str, float]:
    """Run one client phase in this process; its time and peak RSS."""
    # Imports before the clock starts: what is measured is the transfer, not Python's start-up.
    import minio  # noqa: F401

    import forgeline_registry.client  # noqa: F401

    started = time.perf_counter()
    if args.phase == "raw-put":
        client = _minio_client(args.endpoint, args.access, args.secret)
        client.fput_object(args.bucket, "raw/blob", args.file)
    elif args.phase == "raw-get":
        client = _minio_client(args.endpoint, args.access, args.secret)
        client.fget_object(args.bucket, "raw/blob", args.file)
    elif args.phase in ("push", "pull"):
        from forgeline_registry.client import RegistryClient

        async def run() -> None:
            async with RegistryClient(args.registry, accept_local_files=False, timeout=3600) as c:
                if args.phase == "push":
                    await c.push(Path(args.file).parent, "bench", request_id=str(uuid.uuid4()))
                else:
                    await c.pull("bench@latest", Path(args.file))

        asyncio.run(run())
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": _peak_rss_mib()}


def _run_phase(name: str, **options: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--phase", name]
    for key, value in options.items():
        command += [f"--{key}", value]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{result.stderr}")
    values: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as out:
        for index in range(size >> 20):
            # Distinct blocks, cheaply: no two MiB are equal.
            out.write(index.to_bytes(8, "little") + block[8:])
        out.write(block[: size % (1 << 20)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--part-size-mib", type=int, default=64)
    parser.add_argument("--phase")
    for option in ("endpoint", "access", "secret", "bucket", "file", "registry"):
        parser.add_argument(f"--{option}", default="")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return

    size = args.size_mib << 20
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as scratch:
        work = Path(scratch)
        try:
            endpoint = os.environ.get("MINIO_ENDPOINT", "").removeprefix("http://")
            access = os.environ.get("MINIO_ACCESS_KEY", ACCESS_KEY)
            secret = os.environ.get("MINIO_SECRET_KEY", SECRET_KEY)
            server_name = "MinIO" if endpoint else "moto"
            if not endpoint:
                port = _free_port()
                moto = subprocess.Popen(  # noqa: S603
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                processes.append(moto)
                _wait_port(port, moto)
                endpoint = f"127.0.0.1:{port}"
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            _minio_client(endpoint, access, secret).make_bucket(bucket)

            grpc_port = _free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")}
            env |= {
                "FORGELINE_REGISTRY_STORAGE": "s3",
                "FORGELINE_REGISTRY_S3_ENDPOINT": endpoint,
                "FORGELINE_REGISTRY_S3_ACCESS_KEY": access,
                "FORGELINE_REGISTRY_S3_SECRET_KEY": secret,
                "FORGELINE_REGISTRY_S3_BUCKET": bucket,
                "FORGELINE_REGISTRY_GRPC_PORT": str(grpc_port),
                "FORGELINE_REGISTRY_METRICS_PORT": "0",
                "FORGELINE_REGISTRY_PART_SIZE_BYTES": str(args.part_size_mib << 20),
                "FORGELINE_REGISTRY_LOG_LEVEL": "WARNING",
            }
            registry = subprocess.Popen(
                [sys.executable, "-m", "forgeline_registry"], env=env, stderr=subprocess.DEVNULL
            )
            processes.append(registry)
            _wait_port(grpc_port, registry)

            source = work / "push" / "model.gguf"
            source.parent.mkdir()
            _make_file(source, size)
            common = {"endpoint": endpoint, "access": access, "secret": secret, "bucket": bucket}
            registry_address = f"127.0.0.1:{grpc_port}"
            results = {
                "raw fput_object": _run_phase("raw-put", file=str(source), **common),
                "registry push": _run_phase(
                    "push", file=str(source), registry=registry_address, **common
                ),
                "raw fget_object": _run_phase("raw-get", file=str(work / "raw.out"), **common),
                "registry pull": _run_phase(
                    "pull", file=str(work / "pulled"), registry=registry_address, **common
                ),
            }
            registry_rss = _hwm_mib(registry.pid)
        finally:
            for process in processes:
                process.terminate()
                process.wait(60)

    print(
        f"{args.size_mib} MiB artifact, {server_name} S3 server on loopback, "
        f"{os.cpu_count()} cores; registry peak RSS {registry_rss:.0f} MiB\n"
    )
    print(
        f"| {'operation':<16} | {'seconds':>8} | {'MiB/s':>7} | {'vs raw':>6} | "
        f"{'client peak RSS':>15} |"
    )
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 17}|")
    pairs = {"registry push": "raw fput_object", "registry pull": "raw fget_object"}
    for name, result in results.items():
        rate = args.size_mib / result["seconds"]
        raw = pairs.get(name)
        ratio = f"{results[raw]['seconds'] / result['seconds']:.2f}x" if raw else ""
        print(
            f"| {name:<16} | {result['seconds']:>8.2f} | {rate:>7.1f} | {ratio:>6} | "
            f"{result['peak_rss_mib']:>11.0f} MiB |"
        )


if __name__ == "__main__":
    main()
