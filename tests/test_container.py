"""The container recipe (Dockerfile) against the package: no engine can build it here, so check it and run it.

The fresh-venv test runs the Dockerfile's own install commands outside a container:
its container paths are mapped into a temporary folder, nothing else changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bidsdeface import __version__

from .conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

DOCKERFILE = REPO / "Dockerfile"
CONSTRAINTS = "constraints.txt"
# RUN steps that set up the image's system rather than install bidsdeface.
SYSTEM_STEPS = ("useradd",)


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def arguments(keyword: str) -> list[str]:
    return [args for key, args in instructions() if key == keyword]


def environment() -> dict[str, str]:
    """The ENV settings (``KEY=VALUE`` pairs, values unquoted)."""
    settings: dict[str, str] = {}
    for line in arguments("ENV"):
        for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", line):
            settings[key] = value.strip('"')
    return settings


def labels() -> dict[str, str]:
    return {key: value for line in arguments("LABEL") for key, value in re.findall(r'([\w.]+)="([^"]*)"', line)}


def install_steps() -> list[str]:
    return [step for step in arguments("RUN") if not any(word in step for word in SYSTEM_STEPS)]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_slim_python_base_and_oci_labels() -> None:
    (base,) = arguments("FROM")
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base), base
    found = labels()
    for key in ("title", "description", "version", "licenses", "source", "url", "documentation", "vendor"):
        assert found.get(f"org.opencontainers.image.{key}"), key
    assert found["org.opencontainers.image.version"] == __version__
    assert found["org.opencontainers.image.licenses"] == pyproject()["project"]["license"]
    descriptor = json.loads((REPO / "boutiques.json").read_text())
    assert environment()["BIDSDEFACE_CONTAINER_IMAGE"] == descriptor["container-image"]["image"]


def test_caches_go_to_a_writable_temporary_folder() -> None:
    """Under a read-only root filesystem (Apptainer's default), matplotlib and other caches need /tmp."""
    env = environment()
    for key in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "DENO_DIR"):
        assert env[key].startswith("/tmp/"), key


def test_entrypoint_is_the_console_script_run_by_a_non_root_user() -> None:
    (entrypoint,) = arguments("ENTRYPOINT")
    assert json.loads(entrypoint) == ["bidsdeface"]
    assert pyproject()["project"]["scripts"]["bidsdeface"] == "bidsdeface.cli:main"
    assert json.loads(arguments("CMD")[0]) == ["--help"]
    keywords = [key for key, _ in instructions()]
    (user,) = arguments("USER")
    assert user not in ("root", "0") and keywords.index("USER") > max(
        i for i, key in enumerate(keywords) if key == "RUN"
    )
    assert any("useradd" in step and user in step for step in arguments("RUN"))
    assert any("> /version" in step for step in install_steps())


def test_copied_files_exist_and_cover_what_the_build_needs() -> None:
    copied: set[str] = set()
    for line in arguments("COPY"):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: missing"
            copied.add(source)
    project = pyproject()
    needed = {
        project["project"]["readme"],
        "LICENSE",
        "pyproject.toml",
        CONSTRAINTS,
        *project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"],
        *project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"],
    }
    assert needed <= copied, needed - copied


def test_one_constraints_file_for_the_image_ci_and_readme() -> None:
    (REPO / CONSTRAINTS).read_text()
    assert all(f"-c {CONSTRAINTS}" in step for step in install_steps() if "pip install" in step)
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    test_command = 'pip install -c constraints.txt -e ".[test]"'
    assert test_command in ci and test_command in readme
    pins = dict(
        line.split("==") for line in (REPO / CONSTRAINTS).read_text().splitlines() if "==" in line and line[0] != "#"
    )
    for requirement in pyproject()["project"]["dependencies"]:
        name = re.split(r"[<>=!~ \[]", requirement)[0]
        assert any(pin.lower() == name.lower() for pin in pins), f"{name} is not pinned"
    (base,) = arguments("FROM")
    python = ".".join(base.split(":")[1].split(".")[:2])
    assert f"Python {python}" in (REPO / CONSTRAINTS).read_text().splitlines()[0]


@pytest.mark.slow
def test_install_steps_in_a_fresh_venv_give_a_working_bidsdeface(tmp_path: Path) -> None:
    (base,) = arguments("FROM")
    python = tuple(int(part) for part in base.split(":")[1].split("-")[0].split(".")[:2])
    if sys.version_info[:2] != python:
        pytest.skip(f"the image's Python is {python}; this is {sys.version_info[:2]} (the pins are for the image's)")
    source = tmp_path / "src"
    source.mkdir()
    for line in arguments("COPY"):
        *sources, _ = line.split()
        for item in sources:
            copy = shutil.copytree if (REPO / item).is_dir() else shutil.copyfile
            copy(REPO / item, source / item)
    venv = tmp_path / "venv"
    mapping = {environment()["VIRTUAL_ENV"]: str(venv), "/version": str(tmp_path / "version")}
    env = {
        **os.environ,
        **{k: v for k, v in environment().items() if k != "PATH"},
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "DENO_DIR": str(tmp_path / "deno"),
        "PIP_NO_COMPILE": "1",  # bytecode is only a cache: the install itself is unchanged, and faster
    }
    env.pop("PYTHONHOME", None)
    for step in install_steps():
        for container_path, here in mapping.items():
            step = step.replace(container_path, here)
        result = subprocess.run(["sh", "-c", step], cwd=source, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{step}\n{result.stderr[-3000:]}"
    assert (tmp_path / "version").read_text() == f"bidsdeface {__version__}\n"
    version = subprocess.run([venv / "bin" / "bidsdeface", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"bidsdeface {__version__}"
    # Not editable: the templates are inside the installed package, away from the source folder.
    shutil.rmtree(source)
    check = "from bidsdeface.templates import load_template; t = load_template(); print(t.head.shape)"
    loaded = subprocess.run(
        [venv / "bin" / "python", "-c", check], capture_output=True, text=True, cwd=tmp_path, env=env, check=False
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    frozen = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "freeze"], capture_output=True, text=True, check=True, env=env
    ).stdout
    pins = {line.lower() for line in (REPO / CONSTRAINTS).read_text().splitlines() if "==" in line}
    installed = {line.lower() for line in frozen.splitlines() if "==" in line and not line.startswith("bidsdeface")}
    assert installed <= pins, installed - pins
