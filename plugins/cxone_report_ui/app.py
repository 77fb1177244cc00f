"""The FastAPI app behind the CXone report tab and the CXone imports page, mounted under ``/cxone``.

Access is Airflow's: the user comes from the UI's ``_token`` cookie (or an ``Authorization: Bearer`` JWT) through
``airflow.api_fastapi.core_api.security.get_user``, and the configured auth manager decides, exactly as for the REST
API: a run's page, report.json and rejects.csv need ``GET`` on the DAG's runs, the dead letters (full phone numbers)
``PUT`` on them (editing runs), the history lists only the DAGs whose runs the user may read. No token: 401. Every
answer (page, file, error) carries ``SECURITY_HEADERS``: never cached, never sniffed, framed only by the UI itself.

Pages read ``report.json`` only (never the outcome files), cached per finished run: the history page reads each
finished run's report once per api-server process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy import select

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.models.dag import DagModel
from airflow.models.dagrun import DagRun
from cxone_runs.layout import RunLayout, dag_ids_with_runs, safe_segment
from cxone_runs.location import storage_base as runs_storage_base
from cxone_runs.pages import (
    HistoryRow,
    RunLinks,
    RunRecord,
    render_error,
    render_history,
    render_no_report,
    render_run_report,
)
from cxone_runs.report import RunReport, read_report

HISTORY_LIMIT_DEFAULT = 100
HISTORY_LIMIT_MAX = 1000
REPORT_CACHE_SIZE = 5000
READ_THREADS = 8
DOWNLOAD_CHUNK = 1 << 20
ERROR_TEXT = {
    status.HTTP_401_UNAUTHORIZED: "Not signed in to Airflow, or the session expired: sign in and open this page again.",
    status.HTTP_403_FORBIDDEN: "Your Airflow user may not see this: it needs the permission to read this DAG's runs "
    "(the dead letters, which hold full phone numbers, need the permission to edit them).",
}

ReadRuns = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
EditRuns = Depends(requires_access_dag("PUT", DagAccessEntity.RUN))
SECURITY_HEADERS = {
    "Cache-Control": "no-store",  # reports and rejects name contacts: no browser or proxy keeps a copy
    "X-Content-Type-Options": "nosniff",  # a CSV or JSONL download is never run as a page or script
    "Content-Security-Policy": "frame-ancestors 'self'",  # shown in the Airflow UI's iframe, nowhere else
    "X-Frame-Options": "SAMEORIGIN",  # the same for browsers without CSP frame-ancestors
    "Referrer-Policy": "same-origin",  # run ids and list names in URLs stay on the api-server
}


# -- where the runs and their reports are ----------------------------------------------------------------------


class RunCatalog:
    """DAG runs from Airflow's metadata DB (unit tests put their own in place through ``run_catalog``)."""

    _columns = (DagRun.dag_id, DagRun.run_id, DagRun.run_type, DagRun.state, DagRun.logical_date, DagRun.run_after,
                DagRun.start_date, DagRun.end_date)

    def __init__(self, session: Any) -> None:
        self._session = session

    @staticmethod
    def _record(row: Any) -> RunRecord:
        dag_id, run_id, run_type, state, logical_date, run_after, started, ended = row
        return RunRecord(dag_id, run_id, str(getattr(run_type, "value", run_type)), str(getattr(state, "value", state)),
                         logical_date or run_after, started, ended)

    def run(self, dag_id: str, run_id: str) -> RunRecord | None:
        row = self._session.execute(
            select(*self._columns).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        ).first()
        return self._record(row) if row else None

    def recent(self, dag_ids: set[str], limit: int) -> list[RunRecord]:
        if not dag_ids:
            return []
        rows = self._session.execute(
            select(*self._columns).where(DagRun.dag_id.in_(dag_ids)).order_by(DagRun.run_after.desc()).limit(limit)
        )
        return [self._record(row) for row in rows]


def run_catalog(session: SessionDep) -> RunCatalog:
    return RunCatalog(session)


def _db_variable(key: str, default: Any) -> Any:
    from airflow.models import Variable

    return Variable.get(key, default_var=default)


def storage_base() -> Any:
    """The import's storage base, resolved as the tasks resolve it (Variables read from the metadata DB here)."""
    return runs_storage_base(variable=_db_variable)


CatalogDep = Annotated[RunCatalog, Depends(run_catalog)]
StorageDep = Annotated[Any, Depends(storage_base)]


class ReportCache:
    """report.json of finished runs, keyed by run and its end date (a cleared, re-run run ends again: re-read)."""

    def __init__(self, size: int = REPORT_CACHE_SIZE) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[datetime, RunReport | None]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, base: Any, run: RunRecord) -> RunReport | None:
        key = (run.dag_id, run.run_id)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and run.ended is not None and cached[0] == run.ended:
                self._entries.move_to_end(key)
                return cached[1]
        report = read_report(RunLayout.for_run(base, run.dag_id, run.run_id))
        if run.ended is not None and run.state not in ("queued", "running"):
            with self._lock:
                self._entries[key] = (run.ended, report)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return report

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


reports = ReportCache()


def readable_dag_ids(user: Any, dag_ids: set[str]) -> set[str]:
    """Those of ``dag_ids`` whose runs the auth manager lets the user read: ``GET`` on the DAG's runs
    (``DagAccessEntity.RUN``, per team), the permission the report tab asks for; reading the DAG alone is not
    enough."""
    if not dag_ids:
        return set()
    teams = DagModel.get_dag_id_to_team_name_mapping(sorted(dag_ids))
    return {dag_id for dag_id in dag_ids if may_access_runs(user, dag_id, "GET", team_name=teams.get(dag_id))}


def may_edit_runs(user: Any, dag_id: str) -> bool:
    return may_access_runs(user, dag_id, "PUT", team_name=DagModel.get_team_name(dag_id))


def may_access_runs(user: Any, dag_id: str, method: str, *, team_name: str | None) -> bool:
    """Whether the auth manager lets the user read (``GET``) or edit (``PUT``) the runs of a DAG."""
    return get_auth_manager().is_authorized_dag(
        method=method, access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id, team_name=team_name), user=user,
    )


def _dag_run(catalog: RunCatalog, dag_id: str, run_id: str) -> RunRecord:
    run = catalog.run(dag_id, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r} of DAG {dag_id!r}")
    return run


def _download(path: Any, filename: str, media_type: str) -> StreamingResponse:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(DOWNLOAD_CHUNK):
                yield chunk

    if not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"this run has no {filename}")
    return StreamingResponse(
        chunks(), media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},  # + SECURITY_HEADERS
    )


def _file_name(run_id: str, name: str) -> str:
    return f"{safe_segment(run_id)}-{name}"


# -- the app -------------------------------------------------------------------------------------------------------

class SecurityHeaders:
    """ASGI middleware: ``SECURITY_HEADERS`` on every answer of the app (pages, downloads, errors), replacing any
    the route set; streaming downloads pass through unbuffered."""

    _names = {name.lower().encode() for name in SECURITY_HEADERS}
    _headers = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self._names]
                message = {**message, "headers": kept + self._headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


app = FastAPI(title="CXone import reports", docs_url=None, redoc_url=None, openapi_url=None)
app.add_middleware(SecurityHeaders)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Pages answer errors as a small page (they are shown in the UI's iframe); everything else as JSON."""
    if "text/html" in request.headers.get("accept", ""):
        message = ERROR_TEXT.get(exc.status_code, str(exc.detail)) if exc.status_code != 404 else str(exc.detail)
        return HTMLResponse(render_error(exc.status_code, message), status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


@app.get("/dags/{dag_id}/report", response_class=HTMLResponse, dependencies=[ReadRuns])
def run_report_page(dag_id: str, run_id: Annotated[str, Query()], user: GetUserDep, catalog: CatalogDep,
                    base: StorageDep) -> HTMLResponse:
    """The CXone report tab of one run (the UI's ``dag_run`` external view)."""
    run = _dag_run(catalog, dag_id, run_id)
    report = reports.get(base, run)
    if report is None:
        return HTMLResponse(render_no_report(dag_id=dag_id, run_id=run_id, run_state=run.state))
    query = urlencode({"run_id": run_id})
    links = RunLinks(
        report_json=f"report.json?{query}",
        rejects_csv=f"rejects.csv?{query}",
        dead_letter=f"dead_letter.jsonl?{query}" if may_edit_runs(user, dag_id) else None,
    )
    return HTMLResponse(render_run_report(report, dag_id=dag_id, run_id=run_id, run_state=run.state, links=links,
                                          started=run.started, ended=run.ended))


@app.get("/dags/{dag_id}/report.json", dependencies=[ReadRuns])
def run_report_json(dag_id: str, run_id: Annotated[str, Query()], catalog: CatalogDep, base: StorageDep) -> JSONResponse:
    report = reports.get(base, _dag_run(catalog, dag_id, run_id))
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "this run has no report.json (yet)")
    return JSONResponse(report)


@app.get("/dags/{dag_id}/rejects.csv", dependencies=[ReadRuns])
def rejects_csv(dag_id: str, run_id: Annotated[str, Query()], catalog: CatalogDep, base: StorageDep) -> Response:
    """The run's rejected rows with every reason (values masked)."""
    run = _dag_run(catalog, dag_id, run_id)
    return _download(RunLayout.for_run(base, dag_id, run.run_id).rejects_csv, _file_name(run_id, "rejects.csv"),
                     "text/csv")


@app.get("/dags/{dag_id}/dead_letter.jsonl", dependencies=[EditRuns])
def dead_letter(dag_id: str, run_id: Annotated[str, Query()], catalog: CatalogDep, base: StorageDep) -> Response:
    """The run's failed records in full (phone numbers included): only for users who may edit the DAG's runs."""
    run = _dag_run(catalog, dag_id, run_id)
    return _download(RunLayout.for_run(base, dag_id, run.run_id).dead_letter, _file_name(run_id, "dead_letter.jsonl"),
                     "application/jsonl")


@app.get("/imports", response_class=HTMLResponse, dependencies=[ReadRuns])
def imports_page(
    request: Request,
    user: GetUserDep,
    catalog: CatalogDep,
    base: StorageDep,
    contact_list: Annotated[str | None, Query(alias="list")] = None,
    limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT_MAX)] = HISTORY_LIMIT_DEFAULT,
) -> HTMLResponse:
    """The CXone imports page (the UI's ``nav`` external view): runs of every import DAG the user may read."""
    runs = catalog.recent(readable_dag_ids(user, dag_ids_with_runs(base)), limit)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        loaded = list(pool.map(lambda run: reports.get(base, run), runs))
    rows = [HistoryRow.of(run, report) for run, report in zip(runs, loaded, strict=True)]
    lists = sorted({row.contact_list_id for row in rows if row.contact_list_id})
    if contact_list:
        rows = [row for row in rows if row.contact_list_id == contact_list]
    prefix = request.scope.get("root_path", "").rstrip("/")
    return HTMLResponse(render_history(rows, prefix=prefix, lists=lists, selected_list=contact_list, limit=limit))

