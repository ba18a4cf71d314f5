"""How normstudy talks to MLflow: bounded HTTP, and which errors are worth sending again."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from normstudy.redact import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Bounded HTTP behaviour; set before mlflow is imported (it reads them at import and per call).
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # its "View run at" lines show passwords
}
_RETRYABLE_4XX = (401, 403, 408, 429)  # credentials, timeouts, throttling: may pass later


class UndeliverableError(Exception):
    """An operation the server can never accept (e.g. metrics of a trial that has no run)."""


def client(uri: str) -> MlflowClient:
    for key, value in HTTP_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # schema-migration chatter on a new local store
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def is_permanent(err: BaseException) -> bool:
    """Whether the server answered ``err`` to the operation itself (resending cannot help),
    rather than not answering (down, timeout, 5xx: send again later)."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, UndeliverableError):
        return True
    if isinstance(err, MlflowException):
        code = err.get_http_status_code()
        return 400 <= code < 500 and code not in _RETRYABLE_4XX
    return False


def why(err: BaseException, limit: int = 200) -> str:
    """An error in one line, short, without passwords."""
    return redact(f"{type(err).__name__}: {str(err)[:limit]}")
