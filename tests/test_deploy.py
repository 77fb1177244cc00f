"""The image recipes, replayed into a fresh virtualenv (tests/image_replay.py; no Docker engine here): what each
Dockerfile installs, with exactly its environment, parses the DAG and registers the provider and the report plugin.

Python here is the interpreter of ``.venv`` (3.11), the images run the 3.12 builds; the pins are for both."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.image_replay import DockerIgnore, Replay, ReplayedImage, ReplayError, context_files

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".venv" / "bin" / "uv"
DAG_ID = "cxone_contact_import"
RECIPES = {"astro": "Dockerfile", "helm-chart": "deploy/helm/Dockerfile"}
LOCAL_STATE = (".venv", ".airflow", "data", "artifacts", ".git", ".pytest_cache", "airflow_settings.yaml")
PROBE_TIMEOUT_S = 180


def replay(recipe: str, folder: Path, dockerignore: str | None = None) -> ReplayedImage:
    dockerfile = (ROOT / RECIPES[recipe]).read_text()
    return Replay(ROOT, folder / "root", uv=UV, dockerignore=dockerignore).run(dockerfile)


def probe(image: ReplayedImage, folder: Path, **env_changes: str | None) -> dict:
    """What Airflow loads in the image (tests/image_probe.py run by its Python, with its environment and WORKDIR)."""
    probe_dir = folder / "probe"
    probe_dir.mkdir(exist_ok=True)
    shutil.copy(ROOT / "tests" / "image_probe.py", probe_dir)  # not run from tests/: nothing of the repo on sys.path
    env = {**image.environment(), "HOME": str(folder)}
    for key, value in env_changes.items():
        env.pop(key) if value is None else env.__setitem__(key, value)
    done = subprocess.run(
        [str(image.venv / "bin" / "python"), str(probe_dir / "image_probe.py")],
        env=env, cwd=image.host_path("."), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=sorted(RECIPES))
def image(request, tmp_path_factory) -> tuple[ReplayedImage, Path]:
    folder = tmp_path_factory.mktemp(f"image-{request.param}")
    return replay(request.param, folder), folder


@pytest.fixture(scope="module")
def loaded(image) -> dict:
    return probe(*image)


def test_the_image_installs_the_pinned_airflow_and_the_provider(loaded):
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"apache-airflow=={loaded['versions']['apache-airflow']}\n" in requirements
    assert loaded["versions"]["cxone-airflow-provider"]


def test_the_dag_parses_in_the_image(loaded):
    assert loaded["dag_import_errors"] == {}
    assert DAG_ID in loaded["dag_ids"]


def test_the_provider_registers_the_cxone_connection_type(loaded):
    assert "cxone-airflow-provider" in loaded["providers"]
    assert loaded["cxone_hook"] == "cxone_provider.hooks.cxone.CXoneHook"
    assert "extra__cxone__requests_per_minute" in loaded["cxone_form_fields"]


def test_the_report_plugin_registers(loaded):
    assert "cxone_report_ui" in loaded["plugins"]
    assert loaded["plugin_import_errors"] == {}
    assert loaded["report_app"] == "imported"


def test_the_image_pythonpath_is_what_makes_include_importable(image):
    """Without the Dockerfile's PYTHONPATH the DAG does not parse: the replay would notice a recipe that lost it."""
    loaded = probe(*image, PYTHONPATH=None)
    assert any("include" in error for error in loaded["dag_import_errors"].values()), loaded["dag_import_errors"]


def test_local_state_stays_out_of_the_image():
    """What `COPY . .` takes from this working copy (which has all of that local state) after .dockerignore."""
    copied = context_files(ROOT, DockerIgnore.parse((ROOT / ".dockerignore").read_text()))
    assert {"dags", "include", "plugins"} <= {path.split("/")[0] for path in copied}
    assert not [path for path in copied if path.split("/")[0] in LOCAL_STATE]
    assert not [path for path in copied if "__pycache__" in path or path.endswith(".pyc") or ".egg-info/" in path]


@pytest.mark.parametrize(
    ("recipe", "left_out", "reported"),
    [
        ("helm-chart", "constraints.txt", "COPY constraints.txt: not in the build context"),
        ("astro", "plugins", "pip install ./plugins: no such path"),
    ],
    ids=["helm-copy-missing", "astro-install-path-missing"],
)
def test_a_file_the_recipe_needs_but_the_context_lacks_fails_the_replay(tmp_path, recipe, left_out, reported):
    dockerignore = (ROOT / ".dockerignore").read_text() + f"\n{left_out}\n"
    with pytest.raises(ReplayError, match=reported):
        replay(recipe, tmp_path, dockerignore=dockerignore)
