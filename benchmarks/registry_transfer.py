"""Push and pull of one large artifact through the registry, against the raw `minio` SDK
(``fput_object`` / ``fget_object``) on the same S3 server, in one run.

    .venv/bin/python benchmarks/registry_transfer.py --size-mib 2048 --rounds 3

The S3 server is moto's (in memory, Python) unless ``--s3rver PATH`` names the executable of
s3rver, a Node.js S3 server that keeps objects on disk (``npm install s3rver`` in any directory;
the benchmark starts it on a free port with a scratch directory), or MINIO_ENDPOINT (with
MINIO_ACCESS_KEY, MINIO_SECRET_KEY) points at a running server such as MinIO. The ratio depends
on the server: the registry's verification (hashing the file, reading the parts back) is a fixed
cost beside the server's own upload and GET, and raw `fput_object` pays the server's assembly of
its multipart upload, which the registry's part objects avoid.

Every side runs in its own process so that peak RSS is its own: the S3 server, the registry
(``python -m forgeline_registry`` on the s3 driver), and each client phase. A push through the
registry is: hash the file, BeginVersion, upload the parts straight to the store with presigned
URLs, CommitVersion (which reads the parts back and hashes them before the manifest is written).
A pull is: GetDownloadGrants, then one presigned GET per part, hashed on the way, the file
appearing only once verified. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
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

    import forgeline_registry_client.client  # noqa: F401

    started = time.perf_counter()
    if args.phase == "raw-put":
        client = _minio_client(args.endpoint, args.access, args.secret)
        client.fput_object(args.bucket, "raw/blob", args.file)
    elif args.phase == "raw-get":
        client = _minio_client(args.endpoint, args.access, args.secret)
        client.fget_object(args.bucket, "raw/blob", args.file)
    elif args.phase in ("push", "pull"):
        from forgeline_registry_client.client import RegistryClient, TransferProgress

        marks: dict[str, float] = {}

        class Steps(TransferProgress):
            def start(self, phase: str, total: int) -> None:
                marks[phase] = time.perf_counter()

        def uploaded(_: object) -> None:
            marks["committing"] = time.perf_counter()

        async def run() -> None:
            async with RegistryClient(args.registry, accept_local_files=False, timeout=3600) as c:
                if args.phase == "push":
                    await c.push(
                        Path(args.file).parent,
                        "bench",
                        request_id=str(uuid.uuid4()),
                        progress=Steps(),
                        after_upload=uploaded,
                    )
                else:
                    await c.pull("bench@latest", Path(args.file))

        asyncio.run(run())
        if args.phase == "push":
            # Where a push's time goes: hashing the file, sending the parts, and CommitVersion
            # (the registry reading the parts back to verify them).
            ended = time.perf_counter()
            steps = {"hashing": started, **marks, "end": ended}
            names = list(steps)
            return {
                "seconds": ended - started,
                "peak_rss_mib": _peak_rss_mib(),
                **{f"{a}_s": steps[b] - steps[a] for a, b in itertools.pairwise(names)},
            }
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


def _version(executable: Path) -> str:
    result = subprocess.run(  # noqa: S603
        [str(executable), "--version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "(version unknown)"


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
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
    parser.add_argument(
        "--s3rver", type=Path, help="the s3rver executable: run against it instead of moto"
    )
    parser.add_argument("--phase")
    for option in ("endpoint", "access", "secret", "bucket", "file", "registry"):
        parser.add_argument(f"--{option}", default="")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return

    size = args.size_mib << 20
    processes: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as scratch:
        work = Path(scratch)
        try:
            endpoint = os.environ.get("MINIO_ENDPOINT", "").removeprefix("http://")
            access = os.environ.get("MINIO_ACCESS_KEY", ACCESS_KEY)
            secret = os.environ.get("MINIO_SECRET_KEY", SECRET_KEY)
            server_name = f"the S3 server at {endpoint}" if endpoint else "moto's S3 server"
            if args.s3rver:
                port = _free_port()
                data = work / "s3rver"
                data.mkdir()
                s3rver = subprocess.Popen(  # noqa: S603
                    [str(args.s3rver), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "-s"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                processes.append(s3rver)
                _wait_port(port, s3rver)
                endpoint = f"127.0.0.1:{port}"
                access = secret = "S3RVER"  # the only credentials s3rver accepts
                server_name = "s3rver " + _version(args.s3rver)
            elif not endpoint:
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
            common = {"endpoint": endpoint, "access": access, "secret": secret, "bucket": bucket}
            registry_address = f"127.0.0.1:{grpc_port}"
            for index in range(args.rounds):
                # New random bytes each round: the registry would skip a blob it already has.
                _make_file(source, size)
                pulled = work / f"pulled-{index}"
                steps = {
                    "raw fput_object": partial(_run_phase, "raw-put", file=str(source), **common),
                    "registry push": partial(
                        _run_phase, "push", file=str(source), registry=registry_address, **common
                    ),
                    "raw fget_object": partial(
                        _run_phase, "raw-get", file=str(work / "raw.out"), **common
                    ),
                    "registry pull": partial(
                        _run_phase, "pull", file=str(pulled), registry=registry_address, **common
                    ),
                }
                # Alternate which side of each pair goes first: the server's state drifts.
                names = list(steps)
                if index % 2:
                    names = [names[1], names[0], names[3], names[2]]
                for name in names:
                    results.setdefault(name, []).append(steps[name]())
                shutil.rmtree(pulled, ignore_errors=True)
                print(f"round {index + 1} of {args.rounds} done", file=sys.stderr)
            registry_rss = _hwm_mib(registry.pid)
        finally:
            for process in processes:
                process.terminate()
                process.wait(60)

    print(
        f"{args.size_mib} MiB artifact, {server_name} on loopback, "
        f"{os.cpu_count()} cores, median of {args.rounds} alternating rounds; "
        f"registry peak RSS {registry_rss:.0f} MiB\n"
    )
    print(
        f"| {'operation':<16} | {'seconds':>8} | {'MiB/s':>7} | {'vs raw':>6} | "
        f"{'client peak RSS':>15} | {'each round (s)':<22} |"
    )
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 17}|{'-' * 24}|")
    pairs = {"registry push": "raw fput_object", "registry pull": "raw fget_object"}
    medians = {name: _median(runs, "seconds") for name, runs in results.items()}
    for name, runs in results.items():
        rate = args.size_mib / medians[name]
        raw = pairs.get(name)
        ratio = f"{medians[raw] / medians[name]:.2f}x" if raw else ""
        rss = max(run["peak_rss_mib"] for run in runs)
        each = " ".join(f"{run['seconds']:.1f}" for run in runs)
        print(
            f"| {name:<16} | {medians[name]:>8.2f} | {rate:>7.1f} | {ratio:>6} | "
            f"{rss:>11.0f} MiB | {each:<22} |"
        )
    push = results["registry push"]
    step_names = [key for key in push[0] if key.endswith("_s")]
    print(
        "\nregistry push, step by step (medians): "
        + ", ".join(f"{key[:-2]} {_median(push, key):.2f} s" for key in step_names)
    )


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


if __name__ == "__main__":
    main()
