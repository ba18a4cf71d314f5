"""Real services on loopback for the cluster tests: an S3-compatible store (moto_server), an
MLflow tracking server with basic auth, and a two-node Ray cluster (`ray start --head` plus
`ray start --address`). Every process is stopped by pid on every exit path."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not listen on {port}: {log.read_text()[-3000:]}")


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stops a process group started by `spawn`: SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def pids_matching(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (Ray's own daemons start new sessions,
    so a node is found by its unique temp dir or port rather than by process group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ):
                found.append(int(entry.name))
    return found


def kill_matching(text: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_matching(text):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while pids_matching(text) and time.monotonic() < deadline:
            time.sleep(0.3)


@dataclass
class S3Store:
    proc: subprocess.Popen[bytes]
    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }


def start_s3(folder: Path, bucket: str = "normstudy-test") -> S3Store:
    port = free_port()
    log = folder / "moto.log"
    proc = spawn(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log, {**os.environ}
    )
    try:
        wait_for_port(port, proc, log, "moto_server")
        store = S3Store(proc, f"http://127.0.0.1:{port}", bucket)
        import boto3

        boto3.client("s3", **_boto_args(store)).create_bucket(Bucket=bucket)
    except BaseException:
        stop(proc)
        raise
    return store


def _boto_args(store: S3Store) -> dict[str, str]:
    e = store.env
    return {
        "endpoint_url": e["AWS_ENDPOINT_URL"],
        "aws_access_key_id": e["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": e["AWS_SECRET_ACCESS_KEY"],
        "region_name": e["AWS_DEFAULT_REGION"],
    }


@dataclass
class MlflowServer:
    folder: Path
    port: int
    env: dict[str, str]
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.folder / "mlflow.log"
        self.proc = spawn(self.args, log, self.env)
        wait_for_port(self.port, self.proc, log, "mlflow server")

    def kill(self) -> None:
        """Gone at once, as a crashed server is (SIGKILL to its process group)."""
        stop(self.proc, signal.SIGKILL)
        self.proc = None


def mlflow_with_auth(folder: Path, s3: S3Store, admin_password: str) -> MlflowServer:
    """`mlflow server --app-name basic-auth`, artifacts proxied to the S3 store (as on the head)."""
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a password hash per request is slow on 2 busy cores; cache checks as a head would
        "auth_cache_ttl_seconds = 60\n"
    )
    port = free_port()
    env = {
        **os.environ,
        **s3.env,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),  # CSRF key of the auth app
    }
    args = [
        str(BIN / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        f"s3://{s3.bucket}/mlartifacts",
    ]
    server = MlflowServer(folder, port, env, args)
    server.start()
    import requests  # the auth app's first answer is slow (it sets up its store): not in a test

    requests.get(f"{server.uri}/health", timeout=120)
    requests.get(
        f"{server.uri}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        auth=("admin", admin_password),
        timeout=120,
    ).raise_for_status()
    return server


@dataclass
class RayNode:
    proc: subprocess.Popen[bytes]
    node_manager_port: int

    def raylet_pids(self) -> list[int]:
        return [
            p
            for p in pids_matching(f"--node_manager_port={self.node_manager_port}")
            if "raylet/raylet" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        ]

    def node_id(self) -> str:
        cmd = Path(f"/proc/{self.raylet_pids()[0]}/cmdline").read_bytes().decode()
        return next(a for a in cmd.split("\0") if a.startswith("--node_id=")).split("=", 1)[1]


@dataclass
class LoopbackCluster:
    """A head (1 CPU, dashboard and Jobs API) and workers (1 CPU each) on 127.0.0.1, with Ray's
    token authentication on, as on a real cluster."""

    temp_dir: Path
    env: dict[str, str]
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    head: RayNode | None = None
    workers: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ports(self) -> list[str]:
        nm = free_port()
        base = [
            "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(self.temp_dir),
            "--node-manager-port", str(nm), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--disable-usage-stats", "--block",
        ]  # fmt: skip
        return base

    def _start(self, extra: list[str], name: str) -> RayNode:
        args = [str(BIN / "ray"), "start", *extra, *self._ports()]
        nm = int(args[args.index("--node-manager-port") + 1])
        proc = spawn(args, self.temp_dir.parent / f"{name}.log", self.env)
        node = RayNode(proc, nm)
        deadline = time.monotonic() + 120
        while not node.raylet_pids():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start")
            time.sleep(0.5)
        return node

    def start(self) -> None:
        self.head = self._start(
            [
                "--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(free_port()),
            ],
            "head",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.dashboard_port), 1).close()
                break
            time.sleep(0.5)
        self.add_worker()

    def add_worker(self) -> RayNode:
        node = self._start(
            ["--address", f"127.0.0.1:{self.gcs_port}"], f"worker{len(self.workers)}"
        )
        self.workers.append(node)
        self.wait_for_nodes(1 + len(self.live_workers()))
        return node

    def live_workers(self) -> list[RayNode]:
        return [w for w in self.workers if w.raylet_pids()]

    def kill_worker(self, node: RayNode) -> None:
        """The node dies as a lost machine does: its raylet is SIGKILLed; the rest follows."""
        for pid in node.raylet_pids():
            os.kill(pid, signal.SIGKILL)
        stop(node.proc, signal.SIGKILL)

    def alive_node_count(self) -> int:
        import json
        import urllib.request

        request = urllib.request.Request(
            f"{self.address}/nodes?view=summary",
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            summary = json.load(response)["data"]["summary"]
        return sum(1 for n in summary if n["raylet"]["state"] == "ALIVE")

    def wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, KeyError, ValueError):
                if self.alive_node_count() == count:
                    return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {count} alive nodes")

    def stop(self) -> None:
        for node in [*self.workers, *([self.head] if self.head else [])]:
            stop(node.proc)
        kill_matching(str(self.temp_dir))
