"""Apply an Astro-format ``airflow_settings.yaml`` to the Airflow metadata DB with Airflow's own import commands.

    python scripts/apply_settings.py [--settings airflow_settings.yaml] [--out-dir DIR]
        [--cxone-url http://127.0.0.1:PORT] [--webhook-url http://127.0.0.1:PORT] [--dry-run]

Converts the YAML's ``airflow.connections``, ``airflow.variables`` and ``airflow.pools`` into the JSON files that
``airflow connections import --overwrite``, ``airflow variables import -a overwrite`` and ``airflow pools import``
read, writes them to ``--out-dir`` (default ``$AIRFLOW_HOME/stack/settings``) and runs those three commands through
Airflow's CLI parser in this one interpreter (the same code path as the ``airflow`` executable, one start-up instead
of three). Entries of the same name are overwritten: the settings file is the source of truth on every start.

``--cxone-url`` / ``--webhook-url`` re-point the connections that name the local sandbox (in the YAML: its container
service name ``cxone-sandbox``, as ``astro dev start`` reaches it, or a loopback URL) at the ports a stack actually
uses, so ``make airflow`` and an isolated test stack on free ports get working connections. URLs of real hosts are
never rewritten. ``--dry-run`` writes the JSON files and prints them (secrets masked) without touching the DB, and
needs no Airflow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Hosts that name the local sandbox: loopback (a stack on this machine) or its service in docker-compose.override.yml.
SANDBOX_SERVICE = "cxone-sandbox"
SANDBOX_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", SANDBOX_SERVICE})
CXONE_CONN_ID = "cxone_default"
WEBHOOK_CONN_ID = "crm_webhook"
# Astro's connection keys -> the Connection constructor's parameter names that `airflow connections import` takes.
CONNECTION_FIELDS = {
    "conn_type": "conn_type",
    "conn_host": "host",
    "conn_schema": "schema",
    "conn_login": "login",
    "conn_password": "password",
    "conn_port": "port",
    "conn_description": "description",
}


class SettingsError(ValueError):
    """The settings file does not have the Astro ``airflow_settings.yaml`` shape."""


def load_settings(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``airflow:`` section of an Astro settings file: lists of connections, variables and pools."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    section = document.get("airflow") if isinstance(document, dict) else None
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: expected a top-level 'airflow:' mapping")
    settings = {}
    for kind in ("connections", "variables", "pools"):
        entries = section.get(kind) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise SettingsError(f"{path}: 'airflow.{kind}' must be a list of mappings")
        settings[kind] = entries
    return settings


def _names_sandbox(url: str) -> bool:
    return (urlsplit(url).hostname or "") in SANDBOX_HOSTS


def _repoint(url: str, target: str | None) -> str:
    """``target`` instead of ``url`` when both are set and ``url`` names the local sandbox."""
    return target.rstrip("/") if target and url and _names_sandbox(url) else url


def convert_connections(
    entries: list[dict[str, Any]], *, cxone_url: str | None = None, webhook_url: str | None = None
) -> dict[str, dict[str, Any]]:
    """Astro connection entries -> ``{conn_id: {conn_type, host, login, password, schema, port, extra}}``."""
    connections: dict[str, dict[str, Any]] = {}
    for entry in entries:
        conn_id = entry.get("conn_id")
        if not conn_id or not entry.get("conn_type"):
            raise SettingsError(f"a connection needs conn_id and conn_type: {sorted(entry)}")
        conn = {field: entry[key] for key, field in CONNECTION_FIELDS.items() if entry.get(key) not in (None, "")}
        if "port" in conn:
            conn["port"] = int(conn["port"])
        extra = entry.get("conn_extra")
        if isinstance(extra, str):
            extra = json.loads(extra) if extra.strip() else None
        extra = dict(extra or {})
        if conn_id == CXONE_CONN_ID and extra.get("host"):
            extra["host"] = _repoint(str(extra["host"]), cxone_url)
        if conn_id == WEBHOOK_CONN_ID and conn.get("host"):
            conn["host"] = _repoint(str(conn["host"]), webhook_url)
        if extra:
            conn["extra"] = json.dumps(extra)
        connections[str(conn_id)] = conn
    return connections


def convert_variables(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Astro variable entries -> ``{key: value}`` (strings stay strings; other values are stored as JSON)."""
    variables = {}
    for entry in entries:
        if not entry.get("variable_name"):
            raise SettingsError(f"a variable needs variable_name: {sorted(entry)}")
        value = entry.get("variable_value")
        variables[str(entry["variable_name"])] = "" if value is None else value
    return variables


def convert_pools(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Astro pool entries -> ``{name: {slots, description, include_deferred}}``."""
    pools = {}
    for entry in entries:
        if not entry.get("pool_name") or entry.get("pool_slot") is None:
            raise SettingsError(f"a pool needs pool_name and pool_slot: {sorted(entry)}")
        pools[str(entry["pool_name"])] = {
            "slots": int(entry["pool_slot"]),
            "description": str(entry.get("pool_description") or ""),
            "include_deferred": bool(entry.get("pool_include_deferred", False)),
        }
    return pools


def write_import_files(
    settings: dict[str, list[dict[str, Any]]], out_dir: Path, *, cxone_url: str | None, webhook_url: str | None
) -> dict[str, Path]:
    """Write the three JSON files (owner-only: they hold secrets); return their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    documents = {
        "connections": convert_connections(settings["connections"], cxone_url=cxone_url, webhook_url=webhook_url),
        "variables": convert_variables(settings["variables"]),
        "pools": convert_pools(settings["pools"]),
    }
    paths = {}
    for kind, document in documents.items():
        path = out_dir / f"{kind}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
        paths[kind] = path
    return paths


def import_commands(paths: dict[str, Path]) -> list[list[str]]:
    """The ``airflow`` CLI argument lists that load the files (empty sections are skipped)."""
    commands = []
    if json.loads(paths["connections"].read_text()):
        commands.append(["connections", "import", str(paths["connections"]), "--overwrite"])
    if json.loads(paths["variables"].read_text()):
        commands.append(["variables", "import", str(paths["variables"]), "--action-on-existing-key", "overwrite"])
    if json.loads(paths["pools"].read_text()):
        commands.append(["pools", "import", str(paths["pools"])])
    return commands


def run_airflow_commands(commands: list[list[str]]) -> None:
    """Run ``airflow <args>`` for each command through Airflow's CLI parser, in this process."""
    from airflow import configuration  # noqa: F401 - first airflow import, as airflow.__main__ does
    from airflow.cli import cli_parser

    parser = cli_parser.get_parser()
    for argv in commands:
        print("+ airflow " + " ".join(argv), flush=True)
        args = parser.parse_args(argv)
        args.func(args)
        sys.stdout.flush()


def _masked(document: dict[str, Any]) -> dict[str, Any]:
    return {
        key: {**value, "password": "***"} if isinstance(value, dict) and value.get("password") else value
        for key, value in document.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=Path, default=ROOT / "airflow_settings.yaml")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: $AIRFLOW_HOME/stack/settings")
    parser.add_argument("--cxone-url", default=None, help="re-point a sandbox cxone_default host here")
    parser.add_argument("--webhook-url", default=None, help="re-point a sandbox crm_webhook host here")
    parser.add_argument("--dry-run", action="store_true", help="write and print the JSON files, import nothing")
    args = parser.parse_args(argv)

    out_dir = args.out_dir or Path(os.environ.get("AIRFLOW_HOME", ROOT / ".airflow")) / "stack" / "settings"
    try:
        settings = load_settings(args.settings)
    except (OSError, yaml.YAMLError, SettingsError) as exc:
        print(f"apply_settings: cannot read {args.settings}: {exc}", file=sys.stderr)
        return 2
    paths = write_import_files(settings, out_dir, cxone_url=args.cxone_url, webhook_url=args.webhook_url)
    commands = import_commands(paths)
    if args.dry_run:
        for path in paths.values():
            print(f"# {path}\n{json.dumps(_masked(json.loads(path.read_text())), indent=2)}")
        for argv_ in commands:
            print("airflow " + " ".join(argv_))
        return 0
    run_airflow_commands(commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
