"""Airflow UI for CXone import runs: a "CXone report" tab on every DAG run and a "CXone imports" page in the nav bar.

Both are pages of one FastAPI app (``plugins/cxone_report_ui/app.py``) mounted on the api-server under ``/cxone``
and shown by the UI in an iframe (``external_views``; the iframe is same-origin, so the UI's ``_token`` cookie signs
the user in). Every Airflow component loads plugins, so this module stays light: the app, with the api-server's
security modules and pandas, is imported on its first request, in the api-server only.
"""

from __future__ import annotations

import base64
import importlib
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/cxone"
APP = "cxone_report_ui.app:app"
ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect x="1" y="9" width="3" height="6" fill="#2e7d32"/>'
    '<rect x="6" y="5" width="3" height="10" fill="#0277bd"/><rect x="11" y="1" width="3" height="14" fill="#ef6c00"/>'
    "</svg>"
)
ICON = "data:image/svg+xml;base64," + base64.b64encode(ICON_SVG.encode()).decode()


class LazyASGIApp:
    """An ASGI app that imports the real one (``module:attribute``) on its first request."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._app: Any = None

    def load(self) -> Any:
        if self._app is None:
            module, _, attribute = self.target.partition(":")
            self._app = getattr(importlib.import_module(module), attribute)
        return self._app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.load()(scope, receive, send)

    def __repr__(self) -> str:
        return f"LazyASGIApp({self.target!r})"


class CXoneReportPlugin(AirflowPlugin):
    """The report tab (``dag_run`` destination) and the history page (``nav``), served by the app under /cxone."""

    name = "cxone_report_ui"
    fastapi_apps = [{"app": LazyASGIApp(APP), "url_prefix": URL_PREFIX, "name": "CXone import reports"}]
    external_views = [
        {
            "name": "CXone report",
            "href": URL_PREFIX + "/dags/{DAG_ID}/report?run_id={RUN_ID}",
            "destination": "dag_run",
            "url_route": "cxone-report",
            "icon": ICON,
        },
        {
            "name": "CXone imports",
            "href": URL_PREFIX + "/imports",
            "destination": "nav",
            "url_route": "cxone-imports",
            "icon": ICON,
            "nav_top_level": True,
        },
    ]
