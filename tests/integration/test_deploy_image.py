"""deploy/Containerfile's install steps, run here without a container engine.

No image is built (no Docker engine on this machine). What the file does is done
with its own commands: the build context is made of exactly what its COPY lines
name, its RUN lines are run with ``/wheels`` and ``/src`` replaced by temporary
directories (the wheel of smartpark, the wheels of everything ``[platform]`` needs,
the offline install into a fresh virtualenv, pip removed), then the installed
``smartpark`` migrates the real local PostgreSQL and ``smartpark-healthcheck``
runs. What differs from a real build: the base image (this machine's Python
3.11, not ``python:3.11.11-slim-bookworm``), the user, and BuildKit's bind mount.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from smartpark.cli import COMMANDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "deploy" / "Containerfile"


def instructions() -> list[tuple[str, str, str]]:
    """(stage, instruction, value) of each line of the Containerfile."""
    parser = DockerfileParser(fileobj=io.StringIO(CONTAINERFILE.read_text()))
    out, stage = [], ""
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            stage = ins["value"].split()[-1]
        out.append((stage, ins["instruction"], ins["value"]))
    return out


def run(cmd: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_image_steps_install_smartpark_and_its_entry_points(
    tmp_path: Path, pg_dsn: str, db_schema: str
) -> None:
    ctx, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"
    steps = instructions()
    # The build stage: its context is only what COPY names.
    for stage, ins, value in steps:
        if stage == "build" and ins == "COPY":
            *sources, dest = value.split()
            for src in sources:
                assert dest.rstrip("/") in (".", src.rstrip("/")), value
                if (REPO / src).is_dir():
                    shutil.copytree(
                        REPO / src,
                        ctx / src,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                else:
                    (ctx / src).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / src, ctx / src)
    builds = [v for s, i, v in steps if s == "build" and i == "RUN"]
    assert len(builds) == 2
    py = sys.executable
    for cmd in builds:
        run(cmd.replace("/wheels", str(wheels)).replace("python -m", f"{py} -m"), ctx)
    assert len(list(wheels.glob("smartpark-*.whl"))) == 1

    # The runtime stage: a fresh environment, the offline install, pip removed.
    run(f"{py} -m venv {venv}", tmp_path)
    vpy = venv / "bin" / "python"
    (install,) = [
        v for s, i, v in steps
        if s == "runtime" and i == "RUN" and "pip install" in v
    ]  # fmt: skip
    install = install.removeprefix(
        "--mount=type=bind,from=build,source=/wheels,target=/wheels"
    ).strip()
    run(
        install.replace("/wheels", str(wheels)).replace("python -m", f"{vpy} -m"),
        tmp_path,
    )
    pip = subprocess.run(
        [vpy, "-m", "pip", "--version"], capture_output=True, check=False
    )
    assert pip.returncode != 0, "pip is left in the image"

    # The entry point, each sub-command's module importable, the migrations shipped.
    smartpark = venv / "bin" / "smartpark"
    usage = run(f"{smartpark} --help", tmp_path)
    for name in COMMANDS:
        if name != "demo":  # the demo extra is not in the image
            run(f"{smartpark} {name} --help > /dev/null", tmp_path)
        assert f"  {name} " in usage
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SMARTPARK_DATABASE__DSN": pg_dsn,
        "SMARTPARK_DATABASE__SCHEMA": db_schema,
        "SMARTPARK_DATABASE__DIALECT": "postgres",
    }
    run("smartpark db migrate", tmp_path, env)
    info = json.loads(run("smartpark db info --json", tmp_path, env))
    shipped = {p.stem for p in (REPO / "storage" / "migrations").glob("*/*.sql")}
    applied = {f"{m['version']:04d}_{m['name']}" for m in info["migrations"]}
    assert info["pending"] == []
    assert applied == shipped, "migrations the installed package lacks"

    # The health check as the image copies it.
    (copy,) = [v for s, i, v in steps if s == "runtime" and i == "COPY"]
    src, dest = copy.split()[-2:]
    assert dest == "/usr/local/bin/smartpark-healthcheck"
    out = subprocess.run(
        [vpy, REPO / src, "connected", "1"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": env["PATH"]},
    )
    assert (out.returncode, out.stderr.strip()) == (
        1, "smartpark-healthcheck: no established connection to port 1",
    )  # fmt: skip
