"""Submitting a study to a running Ray cluster as a Ray job, and asking how its job does.

The job's entrypoint is ``normstudy run`` on the head node with the resolved description shipped
in the job's working_dir. Secrets (the MLflow password) travel in a file inside that working_dir,
not in ``runtime_env.env_vars`` or the entrypoint, which every job listing shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from normstudy.home import StudyPaths
    from normstudy.spec import StudySpec

ENV_FILE = ".normstudy.env"
"""The working_dir file with the driver's MLflow settings; `normstudy run --env-file` loads it."""

# What the driver needs to reach MLflow; only these leave the laptop.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


class SubmitError(RuntimeError):
    """The study cannot be submitted (names the cause and the fix)."""


@dataclass(frozen=True)
class Submission:
    submission_id: str
    address: str
    resumed: bool


def check_tracking(uri: str) -> None:
    """Fails unless the MLflow server at ``uri`` answers and accepts this machine's credentials
    (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``): better one clear error now than
    a study whose every trial fails to log."""
    from normstudy.tracking import check_server

    problem = check_server(uri)
    if problem:
        raise SubmitError(problem)


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as e:
        raise SubmitError(
            f"cannot reach the Ray cluster at {address}: {e}. Is the dashboard port forwarded "
            "(ray dashboard cluster.yaml) and, with token auth, RAY_AUTH_TOKEN set?"
        ) from e


def _ray_token() -> str | None:
    """The cluster's Ray token as Ray itself finds it: ``RAY_AUTH_TOKEN``, the file named by
    ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser()
    return path.read_text().strip() or None if path.is_file() else None


def _fernet(token: str) -> Any:
    import base64
    import hashlib

    from cryptography.fernet import Fernet

    digest = hashlib.sha256(b"normstudy job env\0" + token.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _write_env_file(folder: Path, tracking_uri: str | None) -> None:
    """The driver's MLflow settings, encrypted with a key derived from the cluster's Ray token.
    Ray unpacks a job's working_dir on every node that runs its trials and keeps it in its
    object store, so the file must be useless without the token, which only the cluster and
    its users hold (and which already grants running any code there)."""
    values = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if tracking_uri:
        values["MLFLOW_TRACKING_URI"] = tracking_uri
    token = _ray_token()
    secret = any(k != "MLFLOW_TRACKING_URI" for k in values)
    if secret and token is None:
        raise SubmitError(
            "MLflow credentials would travel to the cluster unencrypted: turn on Ray's token "
            "authentication (RAY_AUTH_MODE=token with the cluster's token in RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), as cluster.yaml does"
        )
    data = json.dumps(values).encode()
    fd = os.open(folder / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(_fernet(token).encrypt(data) if token else data)


def submit_study(
    spec: StudySpec,
    paths: StudyPaths,
    *,
    address: str,
    tracking_uri: str | None,
) -> Submission:
    """Submits ``spec`` as a Ray job that runs (or, if the study exists, resumes) it in
    ``paths.home``; records the job in the study folder."""
    resume = paths.spec_file.exists()
    client = _client(address)
    submission_id = f"normstudy-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="normstudy-job-") as folder:
        work = Path(folder)
        (work / "study.yaml").write_text(
            yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        )
        _write_env_file(work, tracking_uri)
        # Unique content: Ray caches working_dirs by content hash, and `run` deletes the env
        # file once read, so two identical submissions must not share an unpacked folder.
        (work / "submission.json").write_text(json.dumps({"submission_id": submission_id}))
        args = ["normstudy", "run", "study.yaml", "--home", paths.home.uri]
        args += ["--env-file", ENV_FILE, *(["--resume"] if resume else [])]
        try:
            client.submit_job(
                entrypoint=shlex.join(args),
                submission_id=submission_id,
                runtime_env={"working_dir": str(work)},
                entrypoint_num_cpus=0,
                metadata={"normstudy.study": spec.name, "normstudy.home": paths.home.uri},
            )
        except RuntimeError as e:
            raise SubmitError(f"the cluster at {address} refused the job: {e}") from e
    paths.job_file.write_text(
        json.dumps(
            {"submission_id": submission_id, "address": address, "submitted_at": time.time()}
        )
    )
    return Submission(submission_id, address, resume)


def follow(address: str, submission_id: str, echo: Any) -> str:
    """Streams the job's log lines to ``echo`` until it ends; returns its final status."""
    client = _client(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            echo(lines)

    asyncio.run(tail())
    return str(client.get_job_status(submission_id))


def job_state(paths: StudyPaths, address: str | None = None) -> str:
    """The state of the study's last submitted job ('-' if none, 'unknown' if unreachable)."""
    if not paths.job_file.exists():
        return "-"
    job = json.loads(paths.job_file.read_text())
    try:
        client = _client(address or job["address"])
        return str(client.get_job_status(job["submission_id"]))
    except Exception:  # an unreachable or restarted cluster: the state is unknown, not an error
        return "unknown"


def load_env_file(path: Path) -> None:
    """Loads what `submit_study` wrote (decrypting it with this node's Ray token) into this
    process's environment, then deletes the file."""
    data = path.read_bytes()
    token = _ray_token()
    if not data.lstrip().startswith(b"{"):
        from cryptography.fernet import InvalidToken

        if token is None:
            raise SubmitError(f"{path} is encrypted and this node has no Ray token")
        try:
            data = _fernet(token).decrypt(data)
        except InvalidToken as e:
            raise SubmitError(f"{path} was not encrypted with this cluster's Ray token") from e
    for key, value in json.loads(data).items():
        if key in FORWARDED_ENV:
            os.environ[key] = str(value)
    path.unlink(missing_ok=True)
