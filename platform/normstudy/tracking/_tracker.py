"""The study's MLflow window: what the driver logs goes into the outbox and out in order.

MLflow is never the source of truth (Parquet is) and never stalls or kills a study: public
methods only enqueue and never raise; HTTP calls are bounded (`HTTP_ENV`); what the server could
not take waits in ``<study folder>/mlflow_outbox.jsonl`` and is sent when it answers again: in
the running study, at `close`, by the next tracker of the study (``--resume``) or by
``normstudy sync-mlflow``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from normstudy.tracking._client import why
from normstudy.tracking._mlflow import MAX_PARAM_LEN, RunSender
from normstudy.tracking._outbox import Op, Outbox, describe, outbox_file
from normstudy.tracking._worker import Delivery

if TYPE_CHECKING:
    from normstudy.storage import Location

RETRY_ENV = "NORMSTUDY_TRACKING_RETRY_S"
DEFAULT_RETRY_S = 5.0


def retry_interval() -> float:
    """Seconds between probes of a server that does not answer (``$NORMSTUDY_TRACKING_RETRY_S``)."""
    try:
        return max(0.1, float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S)))
    except ValueError:
        return DEFAULT_RETRY_S


Method = TypeVar("Method", bound=Callable[..., None])


def _never_raises(method: Method) -> Method:
    @functools.wraps(method)
    def call(self: StudyTracker, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as e:
            self._delivery.failures.append(f"{method.__name__}: {why(e)}")

    return call  # type: ignore[return-value]


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_LEN]


def _texts(items: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in items.items()}


class StudyTracker:
    """Logs a study to MLflow in the background. Methods never raise and never block long."""

    def __init__(
        self,
        *,
        uri: str,
        study: str,
        artifact_root: Location,
        state_file: Location,
        tags: dict[str, str],
        experiment_tags: dict[str, str] | None = None,
    ) -> None:
        self.uri, self.study, self.tags = uri, study, dict(tags)
        self.outbox_file = outbox_file(state_file)
        try:
            self.outbox = Outbox.load(self.outbox_file)
        except Exception as e:  # the old file stays untouched, for `normstudy sync-mlflow`
            self.outbox = Outbox(None)
            self.outbox.problems.append(f"cannot read {self.outbox_file}: {why(e)}")
        self._sender = RunSender(
            uri=uri, study=study, artifact_root=artifact_root, state_file=state_file
        )
        self._delivery = Delivery(self.outbox, self._sender, retry_s=retry_interval())
        self._add(
            "start_study",
            uid=uuid.uuid4().hex,
            tags=_texts(self.tags),
            experiment_tags=_texts(experiment_tags or {}),
        )
        self._delivery.start()

    @property
    def failures(self) -> list[str]:
        """Operations dropped (the server refused them), and what was left out."""
        return [*self.outbox.problems, *self._delivery.failures, *self._sender.notes]

    def _add(self, kind: str, **fields: Any) -> None:
        op: Op = {"op": kind, "t": int(time.time() * 1000), **fields}
        json.dumps(op)  # what the outbox file could not hold is refused here, not later
        self.outbox.add(op)
        self._delivery.notify()

    # -- public: enqueue and return at once -------------------------------------------------
    def run_id(self, trial_id: str) -> str | None:
        """The MLflow run id of a trial, once its run was created (None before, or while the
        server is down)."""
        return self._sender.run_id(trial_id)

    @_never_raises
    def trial_started(
        self,
        trial_id: str,
        params: dict[str, Any],
        tags: dict[str, str],
        name: str | None = None,
    ) -> None:
        """Starts (or resumes) the trial's run, named ``name`` (else its id). Params whose
        value is None are left out."""
        params = {str(k): _param(v) for k, v in params.items() if v is not None}
        tags = _texts({**self.tags, **tags})
        fields = {"name": name} if name else {}
        self._add("start_trial", trial_id=trial_id, params=params, tags=tags, **fields)

    @_never_raises
    def trial_result(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        metrics = {str(k): float(v) for k, v in metrics.items()}
        self._add("metrics", trial_id=trial_id, metrics=metrics, step=int(step))

    @_never_raises
    def trial_artifacts(self, trial_id: str, files: dict[str, str]) -> None:
        self._add("artifacts", trial_id=trial_id, files=_texts(files))

    @_never_raises
    def trial_tags(self, trial_id: str, tags: dict[str, str]) -> None:
        self._add("tags", trial_id=trial_id, tags=_texts(tags))

    @_never_raises
    def trial_ended(
        self,
        trial_id: str,
        summary: dict[str, float],
        status: str,
        *,
        step: int = 0,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Ends the trial's run with MLflow ``status``; ``summary`` metrics are logged once, at
        ``step`` (the trial's last epoch, so no chart goes back in time)."""
        summary = {str(k): float(v) for k, v in summary.items()}
        extra = {"tags": _texts(tags)} if tags else {}
        self._add(
            "end_trial", trial_id=trial_id, summary=summary, status=status, step=int(step), **extra
        )

    @_never_raises
    def study_ended(
        self,
        best: dict[str, Any] | None,
        status: str = "FINISHED",
        *,
        metrics: dict[str, float] | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        """Ends the study's run: ``best`` names the best trial (tags, best_config.json);
        ``metrics`` (best score, trial counts) and ``params`` (the best configuration) go on
        the study's run. Params already logged keep their value (MLflow's are immutable)."""
        best = None if best is None else json.loads(json.dumps(best, default=str))
        metrics = {str(k): float(v) for k, v in (metrics or {}).items()}
        params = {str(k): _param(v) for k, v in (params or {}).items() if v is not None}
        self._add("end_study", best=best, status=status, metrics=metrics, params=params)

    def close(self, timeout_s: float = 60.0) -> list[str]:
        """Send what waits (bounded by ``timeout_s``); return one line per operation that was
        not delivered: dropped ones, then those kept in the outbox file for later."""
        try:
            self._delivery.close(timeout_s)
            reason = self._delivery.last_error[:120] or f"not sent within {timeout_s:g}s"
            kept = [
                f"{describe(op)}: kept in {self.outbox_file} ({reason})"
                for op in self.outbox.pending()
            ]
            return [*self.failures, *kept]
        except Exception as e:
            return [*self.failures, f"closing the MLflow outbox: {why(e)}"]


@dataclasses.dataclass
class SyncResult:
    sent: int
    left: int
    problems: list[str]
    unreachable: str | None  # the error of the last probe, when the server did not answer


def sync_outbox(
    *, uri: str, study: str, artifact_root: Location, state_file: Location, timeout_s: float
) -> SyncResult:
    """Sends a study's outbox now, on this thread, bounded by ``timeout_s``. Storage errors
    reading the outbox raise."""
    box = Outbox.load(outbox_file(state_file))
    if not len(box):
        return SyncResult(0, 0, box.problems, None)
    sender = RunSender(uri=uri, study=study, artifact_root=artifact_root, state_file=state_file)
    delivery = Delivery(box, sender, retry_s=0.0)
    deadline = time.monotonic() + timeout_s
    while len(box) and time.monotonic() < deadline and delivery.probe():
        delivery.drain(deadline)
    delivery.save(force=True)
    problems = [*box.problems, *delivery.failures, *sender.notes]
    return SyncResult(
        delivery.sent, len(box), problems, None if delivery.up else delivery.last_error
    )
