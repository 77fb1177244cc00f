"""Replays an image recipe (a Dockerfile) on this machine, where no Docker engine runs.

The Dockerfile's own steps are parsed; what its base image contributes is declared in ``BASE_IMAGES``: the image's
``AIRFLOW_HOME`` (also the folder its steps start in) and the Astro Runtime's ONBUILD steps, which run right after
``FROM`` (``docker image inspect --format '{{.Config.OnBuild}}' astrocrpublic.azurecr.io/runtime:3.3-x``: copy
packages.txt and install it with apt, copy requirements.txt and install it with pip, then copy the project).

- ``COPY`` copies from the build context less ``.dockerignore`` (Docker's rules as far as that file uses them); a
  source missing there fails the replay.
- ``RUN`` may be ``pip install ...`` or ``mkdir -p ...``: anything else fails the replay, so a new kind of step is
  taught here before an image relies on it. ``pip install`` runs as ``uv pip install --offline`` (the packages
  ``make setup`` cached) into a virtualenv made the way ``make setup`` makes ``.venv``: ``python -m venv`` from the
  same base interpreter. packages.txt must list no package (apt is not replayed).
- ``ENV`` values are expanded as Docker does (``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR:+word}``).

Image paths live under the replay's ``root`` folder: ``/usr/local/airflow`` is ``root/usr/local/airflow``.
:meth:`ReplayedImage.environment` is exactly the image's environment, with its paths mapped the same way.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

SUPPORTED = frozenset({"ENV", "WORKDIR", "USER", "COPY", "RUN"})  # and the one FROM, first
BRACED = re.compile(r"(\w+)(?::([-+])(.*))?\Z", re.DOTALL)
NAME = re.compile(r"\w+")


class ReplayError(RuntimeError):
    """A step of the recipe cannot be replayed, or failed."""


@dataclass(frozen=True)
class Step:
    instruction: str
    arguments: str
    line: int


@dataclass(frozen=True)
class BaseImage:
    """What a base image brings: its AIRFLOW_HOME (the starting WORKDIR), its environment, its ONBUILD steps."""

    home: str
    onbuild: tuple[Step, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        return {"AIRFLOW_HOME": self.home}


ASTRO_SYSTEM_PACKAGES = "/usr/local/bin/install-system-packages"
ASTRO_PYTHON_DEPENDENCIES = "/usr/local/bin/install-python-dependencies"
ASTRO_ONBUILD = (
    Step("COPY", "packages.txt .", 0),
    Step("RUN", ASTRO_SYSTEM_PACKAGES, 0),
    Step("COPY", "requirements.txt .", 0),
    Step("RUN", ASTRO_PYTHON_DEPENDENCIES, 0),
    Step("COPY", "--chown=astro:0 . .", 0),
)
BASE_IMAGES = {
    "astrocrpublic.azurecr.io/runtime": BaseImage(home="/usr/local/airflow", onbuild=ASTRO_ONBUILD),
    "apache/airflow": BaseImage(home="/opt/airflow"),
}


def parse_dockerfile(text: str) -> list[Step]:
    """The instructions of a Dockerfile (continuation lines joined, comments and blank lines left out)."""
    steps: list[Step] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, arguments = (pending + line).strip().partition(" ")
        steps.append(Step(instruction.upper(), arguments.strip(), start))
        pending = ""
    if pending:
        raise ReplayError("the Dockerfile ends inside a continued line")
    return steps


def base_image(steps: list[Step]) -> tuple[str, str, BaseImage]:
    """(name, tag, what it brings) of the recipe's single ``FROM``."""
    froms = [step for step in steps if step.instruction == "FROM"]
    if len(froms) != 1 or steps[0].instruction != "FROM":
        raise ReplayError("the recipe must start with its one FROM (multi-stage builds are not replayed)")
    name, _, tag = froms[0].arguments.partition(":")
    if name not in BASE_IMAGES:
        raise ReplayError(f"line {froms[0].line}: no replay is declared for the base image {name!r}")
    return name, tag, BASE_IMAGES[name]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern (anchored at the context root; ``*``, ``?`` and ``**``) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] in "[\\":
            raise ReplayError(f".dockerignore pattern {pattern!r}: character classes and escapes are not replayed")
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@dataclass(frozen=True)
class DockerIgnore:
    """``.dockerignore``: the last matching pattern decides; a matched folder excludes what it holds."""

    rules: tuple[tuple[bool, re.Pattern[str]], ...]

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
            rules.append((keep, _pattern_regex(pattern)))
        return cls(tuple(rules))

    def excludes(self, relative: str) -> bool:
        parts = PurePosixPath(relative).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for keep, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not keep
        return excluded


def context_files(context: Path, ignore: DockerIgnore) -> list[str]:
    """Every file of the build context that reaches the image, relative and POSIX-style."""
    files = []
    for folder, dirnames, filenames in os.walk(context):
        relative_folder = Path(folder).relative_to(context).as_posix()
        prefix = "" if relative_folder == "." else relative_folder + "/"
        dirnames[:] = sorted(d for d in dirnames if not ignore.excludes(prefix + d))
        files.extend(prefix + name for name in sorted(filenames) if not ignore.excludes(prefix + name))
    return files


@dataclass
class ReplayedImage:
    """The replayed image: its file system under ``root``, its environment, the virtualenv its installs went to."""

    root: Path
    home: str
    base: str
    env: dict[str, str]
    workdir: str
    venv: Path | None = None
    installs: list[list[str]] = field(default_factory=list)

    def host_path(self, image_path: str) -> Path:
        absolute = PurePosixPath(self.workdir) / image_path
        return self.root / str(absolute).lstrip("/")

    def environment(self) -> dict[str, str]:
        """The image's environment with its paths mapped under ``root``, the virtualenv's ``bin`` first on PATH."""
        mapped = {key: value.replace(self.home, str(self.root) + self.home) for key, value in self.env.items()}
        bin_dir = str(self.venv / "bin") if self.venv else ""
        mapped["PATH"] = os.pathsep.join(filter(None, [bin_dir, "/usr/local/bin", "/usr/bin", "/bin"]))
        return mapped


def expand(value: str, env: dict[str, str]) -> str:
    """Docker's ENV substitution: ``$VAR``, ``${VAR}``, ``${VAR:-word}`` and ``${VAR:+word}`` (word may hold more)."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("${", i):
            depth, end = 1, i + 2
            while depth:
                if end == len(value):
                    raise ReplayError(f"unclosed ${{ in {value!r}")
                depth += {"{": 1, "}": -1}.get(value[end], 0)
                end += 1
            parsed = BRACED.match(value, i + 2, end - 1)
            if parsed is None:
                raise ReplayError(f"substitution {value[i:end]!r} is not replayed")
            name, op, word = parsed.groups()
            current = env.get(name, "")
            if op == "-":
                out.append(current or expand(word, env))
            elif op == "+":
                out.append(expand(word, env) if current else "")
            else:
                out.append(current)
            i = end
        elif value[i] == "$" and (bare := NAME.match(value, i + 1)):
            out.append(env.get(bare.group(), ""))
            i = bare.end()
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


class Replay:
    """Runs a recipe's steps in order (see the module docstring)."""

    def __init__(self, context: Path, root: Path, *, uv: Path, dockerignore: str | None = None) -> None:
        self.context = context
        self.root = root
        self.uv = uv
        text = (context / ".dockerignore").read_text() if dockerignore is None else dockerignore
        self.ignore = DockerIgnore.parse(text)
        self.files = context_files(context, self.ignore)

    def run(self, dockerfile: str) -> ReplayedImage:
        steps = parse_dockerfile(dockerfile)
        name, _, base = base_image(steps)
        image = ReplayedImage(root=self.root, home=base.home, base=name, env=dict(base.env), workdir=base.home)
        image.host_path(".").mkdir(parents=True, exist_ok=True)
        for step in [*base.onbuild, *steps[1:]]:
            if step.instruction not in SUPPORTED:
                raise ReplayError(f"line {step.line}: {step.instruction} is not replayed; teach tests/image_replay.py")
            getattr(self, "_" + step.instruction.lower())(image, step)
        return image

    def _user(self, image: ReplayedImage, step: Step) -> None:
        """File owners are not replayed."""

    def _workdir(self, image: ReplayedImage, step: Step) -> None:
        image.workdir = str(PurePosixPath(image.workdir) / expand(step.arguments, image.env))
        image.host_path(".").mkdir(parents=True, exist_ok=True)

    def _env(self, image: ReplayedImage, step: Step) -> None:
        words = shlex.split(step.arguments)
        if words and "=" not in words[0]:  # the legacy form: ENV KEY value with spaces
            words = [f"{words[0]}={' '.join(words[1:])}"]
        for word in words:
            key, _, value = word.partition("=")
            image.env[key] = expand(value, image.env)

    def _copy(self, image: ReplayedImage, step: Step) -> None:
        *sources, destination = [w for w in shlex.split(step.arguments) if not w.startswith("--chown")]
        target = image.host_path(destination)
        for source in sources:
            wanted = str(PurePosixPath(source))
            if wanted == ".":
                matched = list(self.files)
            else:
                matched = [f for f in self.files if f == wanted or f.startswith(wanted + "/")]
            if not matched:
                raise ReplayError(
                    f"line {step.line}: COPY {source}: not in the build context (missing, or left out by .dockerignore)"
                )
            single_file = matched == [wanted]
            for relative in matched:
                if single_file:
                    into_folder = destination.endswith("/") or len(sources) > 1 or target.is_dir()
                    out = target / PurePosixPath(relative).name if into_folder else target
                else:
                    out = target / (relative if wanted == "." else PurePosixPath(relative).relative_to(wanted))
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.context / relative, out)

    def _run(self, image: ReplayedImage, step: Step) -> None:
        words = shlex.split(step.arguments)
        if words == [ASTRO_SYSTEM_PACKAGES]:
            listed = [w for w in image.host_path("packages.txt").read_text().split() if w]
            if listed:
                raise ReplayError(f"packages.txt lists apt packages {listed}: apt is not replayed")
            return
        if words == [ASTRO_PYTHON_DEPENDENCIES]:
            words = ["pip", "install", "-r", "requirements.txt"]
        if words[:2] == ["mkdir", "-p"]:
            for folder in words[2:]:
                image.host_path(expand(folder, image.env)).mkdir(parents=True, exist_ok=True)
            return
        if words[:3] == ["python", "-m", "pip"]:
            words = words[2:]
        if words[:2] != ["pip", "install"]:
            raise ReplayError(f"line {step.line}: RUN {step.arguments!r} is not replayed; teach tests/image_replay.py")
        self._pip_install(image, step, words[2:])

    def _pip_install(self, image: ReplayedImage, step: Step, words: list[str]) -> None:
        args: list[str] = []
        words = list(words)
        while words:
            word = words.pop(0)
            if word == "--no-cache-dir":  # pip's; uv reads the packages `make setup` cached
                continue
            if word in ("-r", "-c"):
                args += [word, self._existing(image, step, words.pop(0))]
            elif word.startswith("-"):
                raise ReplayError(f"line {step.line}: pip option {word} is not replayed")
            elif word.startswith((".", "/")):
                args.append(self._existing(image, step, word))
            else:
                args.append(word)
        if image.venv is None:
            image.venv = self.root.parent / "venv"
            base_python = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base_python, "-m", "venv", str(image.venv)], check=True, capture_output=True)
        command = [str(self.uv), "pip", "install", "--offline", "--quiet", "--python", str(image.venv / "bin/python")]
        done = subprocess.run([*command, *args], cwd=image.host_path("."), capture_output=True, text=True)
        if done.returncode:
            raise ReplayError(f"line {step.line}: pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        image.installs.append(args)

    def _existing(self, image: ReplayedImage, step: Step, image_path: str) -> str:
        path = image.host_path(image_path)
        if not path.exists():
            raise ReplayError(f"line {step.line}: pip install {image_path}: no such path in the image")
        return str(path)
