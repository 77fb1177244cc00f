"""The repository is an Astro project, checked against what astro-cli itself reads (no Docker engine here).

What is checked comes from astronomer/astro-cli (snapshot of 2026-08-13, commit ed93cc59):
- ``config/config.go`` ``IsProjectDir``: a folder is an Astro project when ``.astro/config.yaml`` exists in it;
  without it ``astro dev start`` stops with "this is not an Astro project directory" (``cmd/utils/utils.go``);
- ``settings/types.go``: the keys and Go types ``airflow_settings.yaml`` is decoded into;
- ``airflow/include/airflow3/composeyml.go.tmpl``: the services and the network of ``astro dev start``, to which
  ``docker-compose.override.yml`` is added (``airflow/docker.go``);
- ``airflow/constants.go`` and ``airflow_versions/``: the Airflow 3 runtime image and its ``X.Y-N`` tags.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from include.cxone_sandbox.__main__ import build_parser
from scripts.apply_settings import convert_connections, load_settings
from tests.image_replay import base_image, parse_dockerfile

ROOT = Path(__file__).resolve().parents[1]
# astro dev init's files that a project keeps (pkg/airflowrt/scaffold.go); IsProjectDir needs only the first.
SCAFFOLD = (".astro/config.yaml", "Dockerfile", "requirements.txt", "packages.txt", ".dockerignore",
            "airflow_settings.yaml", "dags", "include", "plugins")
RUNTIME_IMAGE = "astrocrpublic.azurecr.io/runtime"
RUNTIME_TAG = re.compile(r"^(?P<runtime>(?P<major>\d+)\.\d+-\d+)(?:-python-(?P<python>\d+\.\d+))?$")
# Astro's runtime catalog (updates.astronomer.io/astronomer-runtime, runtimeVersionsV3): the Airflow each build ships.
RUNTIME_AIRFLOW = {"3.3-8": "3.3.2"}
SUPPORTED_PYTHONS = {"3.11", "3.12"}  # what requirements.txt and constraints.txt are pinned for
# settings/types.go: Connection, Pools and Variables (mapstructure keys -> Go field types).
SETTINGS_FIELDS = {
    "connections": {
        "conn_id": str, "conn_type": str, "conn_host": str, "conn_schema": str, "conn_login": str,
        "conn_password": str, "conn_port": int, "conn_uri": str, "conn_extra": (dict, str),
    },
    "pools": {"pool_name": str, "pool_slot": int, "pool_description": str},
    "variables": {"variable_name": str, "variable_value": str},
}
COMPOSE_NETWORK = "airflow"
AIRFLOW_SERVICES = ("scheduler", "dag-processor", "api-server", "triggerer")
SANDBOX_SERVICE = "cxone-sandbox"


def yaml_file(name: str):
    return yaml.safe_load((ROOT / name).read_text())


def test_astro_cli_finds_an_astro_project():
    config = ROOT / ".astro" / "config.yaml"
    assert config.is_file(), "astro dev start: this is not an Astro project directory"
    name = yaml.safe_load(config.read_text())["project"]["name"]
    assert re.sub(r"[^a-z0-9_-]", "", name.lower()).lstrip("_-"), "astro-cli names the compose project after it"


@pytest.mark.parametrize("path", SCAFFOLD, ids=SCAFFOLD)
def test_the_project_keeps_what_astro_dev_init_writes(path):
    assert (ROOT / path).exists()


def test_the_dockerfile_starts_from_the_runtime_that_ships_the_pinned_airflow():
    name, tag, _ = base_image(parse_dockerfile((ROOT / "Dockerfile").read_text()))
    parsed = RUNTIME_TAG.match(tag)
    assert name == RUNTIME_IMAGE and parsed, tag
    assert parsed["major"] == "3", "astro-cli picks its Airflow 3 compose template from the runtime's major version"
    assert f"apache-airflow=={RUNTIME_AIRFLOW[parsed['runtime']]}\n" in (ROOT / "requirements.txt").read_text()
    assert parsed["python"] in SUPPORTED_PYTHONS


def test_settings_load_with_astro_cli_keys_and_types():
    document = yaml_file("airflow_settings.yaml")
    assert set(document) == {"airflow"}
    assert set(document["airflow"]) <= set(SETTINGS_FIELDS)
    for kind, fields in SETTINGS_FIELDS.items():
        for entry in document["airflow"].get(kind) or []:
            assert set(entry) <= set(fields), f"{kind}: keys astro-cli does not read: {set(entry) - set(fields)}"
            for key, value in entry.items():
                wrong_type = isinstance(value, bool) or not isinstance(value, fields[key])
                assert value is None or not wrong_type, f"{kind}.{key} = {value!r}: astro-cli decodes {fields[key]}"


def _sandbox_urls() -> dict[str, str]:
    connections = {c["conn_id"]: c for c in yaml_file("airflow_settings.yaml")["airflow"]["connections"]}
    cxone, webhook = connections["cxone_default"], connections["crm_webhook"]
    return {"cxone": cxone["conn_extra"]["host"], "webhook": webhook["conn_host"]}


def test_the_settings_reach_the_sandbox_container_by_service_name():
    compose = yaml_file("docker-compose.override.yml")
    sandbox = compose["services"][SANDBOX_SERVICE]
    command = sandbox["command"]
    assert command[:3] == ["python", "-m", "include.cxone_sandbox"]
    args = build_parser().parse_args(command[3:])
    assert args.host == "0.0.0.0", "other containers cannot reach a sandbox on the container's own loopback"
    assert COMPOSE_NETWORK in sandbox["networks"]
    urls = {name: urlsplit(url) for name, url in _sandbox_urls().items()}
    assert {url.hostname for url in urls.values()} == {SANDBOX_SERVICE}
    assert (urls["cxone"].port, urls["webhook"].port) == (args.port, args.webhook_port)


def test_every_airflow_container_shares_the_storage_base_and_budget():
    compose = yaml_file("docker-compose.override.yml")
    for service in AIRFLOW_SERVICES:
        config = compose["services"][service]
        storage = urlsplit(config["environment"]["CXONE_IMPORT_STORAGE_BASE"])
        budget = config["environment"]["CXONE_RATE_BUDGET_URL"].removeprefix("sqlite:///")
        mounts = [volume.split(":")[1] for volume in config["volumes"] if volume.split(":")[0] in compose["volumes"]]
        assert storage.scheme == "file" and any(storage.path.startswith(m + "/") for m in mounts), service
        assert any(budget.startswith(m + "/") for m in mounts), service


def test_the_sandbox_container_needs_only_the_standard_library():
    """Its service runs a plain Python image: -S leaves site-packages out, -E the environment's PYTHONPATH."""
    done = subprocess.run(
        [sys.executable, "-S", "-E", "-m", "include.cxone_sandbox", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_make_airflow_repoints_the_sandbox_connections_at_its_local_ports():
    settings = load_settings(ROOT / "airflow_settings.yaml")
    local = convert_connections(
        settings["connections"], cxone_url="http://127.0.0.1:18765", webhook_url="http://127.0.0.1:18766"
    )
    assert '"host": "http://127.0.0.1:18765"' in local["cxone_default"]["extra"]
    assert local["crm_webhook"]["host"] == "http://127.0.0.1:18766"
    untouched = convert_connections(settings["connections"])
    assert untouched["crm_webhook"]["host"] == _sandbox_urls()["webhook"]


def test_a_real_host_is_never_repointed():
    entry = {"conn_id": "crm_webhook", "conn_type": "http", "conn_host": "https://crm.example.com"}
    assert convert_connections([entry], webhook_url="http://127.0.0.1:1")["crm_webhook"]["host"] == entry["conn_host"]
