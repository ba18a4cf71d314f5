"""Cloud keys out of the environment: Ray Tune copies ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` from the driver's environment into every trial's runtime_env, which
Ray writes to world-readable logs. The keys move to a private credentials file that the AWS SDKs
(pyarrow's, boto3) read through ``AWS_SHARED_CREDENTIALS_FILE``; processes started from here
(a local Ray instance and its workers) inherit the variable, not the keys."""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path

_KEYS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_SECURITY_TOKEN": "aws_security_token",
}


def move_aws_keys_to_file(folder: Path) -> Path | None:
    """Writes the environment's static AWS keys to ``folder/aws-credentials-<pid>`` (mode 600)
    under the active profile, points ``AWS_SHARED_CREDENTIALS_FILE`` at it and removes the keys
    from the environment; the file is deleted when this process exits. Returns its path, or
    None when there were no keys."""
    found = {k: os.environ[k] for k in _KEYS if os.environ.get(k)}
    if "AWS_SECRET_ACCESS_KEY" not in found:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"aws-credentials-{os.getpid()}"
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    lines = [f"[{profile}]", *(f"{_KEYS[k]} = {v}" for k, v in found.items())]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write("\n".join(lines) + "\n")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(path)
    for key in found:
        del os.environ[key]
    atexit.register(_remove, path)
    # A file system opened while the keys were in the environment loses them now; its SDK
    # client then signs uploads differently (aws-chunked with trailing checksums), which some
    # S3-compatible stores save verbatim. Open file systems anew from here on.
    from normstudy.storage._location import _filesystem

    _filesystem.cache_clear()
    return path


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
