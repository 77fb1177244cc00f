"""Run by the replayed image's Python (tests/test_deploy.py): what Airflow's components load there, as JSON."""

from __future__ import annotations

import importlib
import importlib.metadata
import json


def main() -> None:
    from airflow import plugins_manager
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    dagbag = DagBag(dag_folder=conf.get("core", "dags_folder"))
    providers = ProvidersManager()  # the api-server's view: providers and connection forms
    cxone_hook = ProvidersManagerTaskRuntime().hooks.get("cxone")  # what a task resolves conn_type cxone to
    try:
        importlib.import_module("cxone_report_ui.app")  # what the api-server imports on the report tab's first request
        report_app = "imported"
    except Exception as exc:  # noqa: BLE001 - reported to the test, which shows it
        report_app = f"{type(exc).__name__}: {exc}"
    print(json.dumps({
        "versions": {name: importlib.metadata.version(name) for name in ("apache-airflow", "cxone-airflow-provider")},
        "dag_ids": sorted(dagbag.dag_ids),
        "dag_import_errors": {str(path): error[-1500:] for path, error in dagbag.import_errors.items()},
        "providers": sorted(providers.providers),
        "cxone_hook": cxone_hook.hook_class_name if cxone_hook else None,
        "cxone_form_fields": sorted(name for name in providers.connection_form_widgets if "__cxone__" in name),
        "plugins": sorted(info["name"] for info in plugins_manager.get_plugin_info(attrs_to_dump=["name"])),
        "plugin_import_errors": plugins_manager.get_import_errors(),
        "report_app": report_app,
    }))


if __name__ == "__main__":
    main()
