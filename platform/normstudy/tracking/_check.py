"""One question to an MLflow server before a study relies on it: do you answer, and accept us?"""

from __future__ import annotations

import os

from normstudy.redact import redact

CHECK_TIMEOUT_S = 30.0


def check_server(uri: str, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None when the tracking server at ``uri`` answers an authenticated request (credentials
    from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, as MLflow's client takes
    them); else a message naming the problem and the fix, without the password."""
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    shown = redact(uri)
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    try:
        response = requests.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            auth=(user, password or "") if user else None,
            headers={"Authorization": f"Bearer {token}"} if token and not user else None,
            timeout=timeout_s,
        )
    except requests.RequestException as e:
        return (
            f"cannot reach the MLflow server at {shown} ({type(e).__name__}); forward its port "
            "(e.g. ray attach cluster.yaml -p 5000) or pass --tracking-uri"
        )
    if response.status_code in (401, 403):
        return (
            f"the MLflow server at {shown} refused the credentials (HTTP {response.status_code}): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that "
            "server (its admin creates accounts in the UI or with the auth REST API)"
        )
    if not response.ok:
        return f"the MLflow server at {shown} answered HTTP {response.status_code}"
    return None
