"""``CallListJobsTrigger``: waits on Airflow's triggerer for calling-list upload jobs to settle, so the import
task holds no worker slot (nor a pool slot) while CXone processes its files.

The calling-list client is blocking (``requests``, the tenant's rate limiter sleeping for its slot, retries with
backoff), so each trigger polls on an executor of its own thread: a slow poll of one trigger never holds up the
triggerer's event loop or its shared sync thread, where every other trigger runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from cxone_provider.errors import CXoneAuthError, CXoneError, CXoneUntrustedHostError
from cxone_provider.retry import backoff_s

log = logging.getLogger(__name__)

COMPLETE, CANCELLED, PENDING = "complete", "cancelled", "pending"
DONE, TIMEOUT, ERROR = "done", "timeout", "error"  # how a wait ended: the event's ``status``
TRIGGER_TIMEOUT_MARGIN_S = 300  # the triggerer's own limit, beyond the trigger's timeout (a stuck trigger)


@dataclass(frozen=True)
class JobWait:
    """What an import task defers on: upload jobs of one calling list (the :class:`CallListJobsTrigger`'s
    arguments, named as its ``serialize()`` names them)."""

    cxone_conn_id: str
    list_id: str
    job_ids: list[str]
    wait_for_list: bool
    submitted_at: float
    timeout_s: float
    poll_first_s: float
    poll_max_s: float

    @property
    def deferral_timeout(self) -> timedelta:
        """How long the task may stay deferred: the trigger's own timeout and a margin for a stuck trigger."""
        return timedelta(seconds=self.timeout_s + TRIGGER_TIMEOUT_MARGIN_S)


@dataclass(frozen=True)
class JobsSettled:
    """The trigger's event, read: how the wait ended (``done``, ``timeout``, ``error``) and each job's state."""

    status: str
    jobs: dict[str, str] = field(default_factory=dict)
    message: str | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> JobsSettled:
        return cls(str(event.get("status") or ERROR), {str(k): str(v) for k, v in (event.get("jobs") or {}).items()},
                   event.get("message"))


class CallListJobsTrigger(BaseTrigger):
    """
    Poll ``lists/call-lists/jobs/{jobId}`` with backoff until every job is complete or cancelled, or until
    ``timeout_s`` after ``submitted_at``; fire one event ``{"status": "done" | "timeout" | "error", "jobs":
    {job_id: complete | cancelled | pending}}``. Nothing secret or personal goes into the event.

    :param cxone_conn_id: the ``call_lists`` connection (resolved on the triggerer, never passed in).
    :param list_id: the calling list.
    :param job_ids: upload jobs to wait for.
    :param wait_for_list: also wait until no job of the list is running (an upload answered without a job id may
        still have started one).
    :param submitted_at: Unix time of the first upload; the timeout counts from it, so a retried task that defers
        again does not wait longer in total.
    :param timeout_s: give up this long after ``submitted_at``.
    :param poll_first_s: the first wait between polls (doubling up to ``poll_max_s``: the retry policy's
        :func:`~cxone_provider.retry.backoff_s`).
    """

    def __init__(
        self,
        *,
        cxone_conn_id: str,
        list_id: str,
        job_ids: list[str],
        wait_for_list: bool = False,
        submitted_at: float,
        timeout_s: float = 3600.0,
        poll_first_s: float = 5.0,
        poll_max_s: float = 60.0,
    ) -> None:
        super().__init__()
        self.cxone_conn_id = cxone_conn_id
        self.list_id = str(list_id)
        self.job_ids = [str(j) for j in job_ids]
        self.wait_for_list = bool(wait_for_list)
        self.submitted_at = float(submitted_at)
        self.timeout_s = float(timeout_s)
        self.poll_first_s = float(poll_first_s)
        self.poll_max_s = float(poll_max_s)
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "cxone_conn_id": self.cxone_conn_id,
                "list_id": self.list_id,
                "job_ids": self.job_ids,
                "wait_for_list": self.wait_for_list,
                "submitted_at": self.submitted_at,
                "timeout_s": self.timeout_s,
                "poll_first_s": self.poll_first_s,
                "poll_max_s": self.poll_max_s,
            },
        )

    def _poll(self, pending: list[str]) -> tuple[dict[str, str], bool]:
        """One round (blocking; runs on this trigger's own thread): the state of each pending job and whether the
        list is busy."""
        if self._client is None:
            from cxone_provider.hooks.cxone import CXoneHook

            self._client = CXoneHook(cxone_conn_id=self.cxone_conn_id).get_call_list_client()
        states = {}
        for job_id in pending:
            job = self._client.job(job_id)
            states[job_id] = CANCELLED if job.is_cancelled else COMPLETE if job.is_complete else PENDING
        busy = self.wait_for_list and any(j.list_id == self.list_id and not j.settled for j in self._client.jobs())
        return states, busy

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _in_own_thread(self, function: Any, *args: Any) -> Any:
        """Run a blocking call on this trigger's executor (one thread: the client is used by one caller at a time)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cxone-jobs-{self.list_id}")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        states = {job_id: PENDING for job_id in self.job_ids}
        deadline = self.submitted_at + self.timeout_s
        poll = 0
        try:
            while True:
                poll += 1
                pending = [j for j, s in states.items() if s == PENDING]
                busy = True
                try:
                    polled, busy = await self._in_own_thread(self._poll, pending)
                    states.update(polled)
                except (CXoneAuthError, CXoneUntrustedHostError) as exc:
                    yield TriggerEvent({"status": ERROR, "message": str(exc), "jobs": states})
                    return
                except CXoneError as exc:  # the client's retries are spent; the next round tries again
                    self.log.warning("list %s: polling upload jobs failed (%s); polling on", self.list_id, exc)
                if not busy and all(s != PENDING for s in states.values()):
                    self.log.info("list %s: upload jobs settled after %d polls: %s", self.list_id, poll, states)
                    yield TriggerEvent({"status": DONE, "jobs": states})
                    return
                remaining = deadline - time.time()
                if remaining <= 0:
                    self.log.warning("list %s: upload jobs not settled after %.0fs: %s", self.list_id,
                                     self.timeout_s, states)
                    yield TriggerEvent({"status": TIMEOUT, "jobs": states})
                    return
                await asyncio.sleep(min(remaining, backoff_s(poll, self.poll_first_s, self.poll_max_s)))
        finally:
            if self._executor is not None:
                # the client is closed on its own thread, after a poll still running there (a cancelled trigger)
                self._executor.submit(self._close_client)
                self._executor.shutdown(wait=False)
                self._executor = None
