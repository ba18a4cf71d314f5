"""A saved view of MLflow's runs table: the trials' runs, sorted by the score, with the score,
the searched params and the status as columns.

MLflow's UI (3.x) loads a view shared under ``KEY`` from the experiment tag
``mlflow.sharedViewState.<KEY>`` when the page's URL has ``viewStateShareKey=<KEY>``; the URL's
``workflowType=machine_learning`` opens the model-training pages (the UI's own default is its
GenAI pages, whatever the experiment's kind). `link` makes that URL.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

KEY = "normstudy"
TAG = f"mlflow.sharedViewState.{KEY}"


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


def view_tags(*, score: str, mode: str, params: list[str]) -> dict[str, str]:
    """The experiment tag holding the view: trial runs only (the study's run is left out, so
    they are not folded under it), best ``score`` first."""
    state = {
        "searchFilter": "tags.`normstudy.role` = 'trial'",
        "orderByKey": _column("metrics", score),
        "orderByAsc": mode == "min",
        "selectedColumns": [
            _column("metrics", score),
            *(_column("params", p) for p in params),
            _column("tags", "normstudy.status"),
        ],
    }
    return {TAG: json.dumps(state)}


def link(server: str, experiment_id: str) -> str:
    """The URL of the view of an experiment on the MLflow server (or UI) at ``server``."""
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": KEY})
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"
