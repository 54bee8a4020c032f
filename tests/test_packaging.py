"""Packaging: PostgreSQL's driver is an extra, and the image installs pinned versions in range."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(pair) == 2 for pair in pairs), "constraints.txt holds name==version lines only"
    return {canonicalize_name(name): version for name, version in pairs}


def test_a_sqlite_install_does_not_get_the_postgresql_driver() -> None:
    names = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert "psycopg" not in names
    extra = [Requirement(r) for r in PROJECT["optional-dependencies"]["postgres"]]
    assert [canonicalize_name(r.name) for r in extra] == ["psycopg"]


def test_every_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    wanted = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["postgres"]]
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in constraints.txt: run deploy/lock.sh"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt has {name}=={pinned[name]}, outside {requirement.specifier}: run deploy/lock.sh"
        )
        for extra in requirement.extras:  # psycopg[binary] brings psycopg-binary
            assert canonicalize_name(f"{name}-{extra}") in pinned


def test_the_image_installs_from_the_constraints_with_the_driver() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY pyproject.toml README.md constraints.txt ./" in dockerfile
    assert "pip install --constraint constraints.txt '.[postgres]'" in dockerfile


def test_a_postgresql_url_without_the_driver_says_which_extra_to_install(tmp_path: Path) -> None:
    hide_psycopg = "import sys; sys.modules['psycopg'] = None; from service.cli import app; app()"
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
    env |= {
        "YIPANQI_DATA_DIR": str(tmp_path),
        "COLUMNS": "200",
        "YIPANQI_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none",
    }
    result = subprocess.run(
        [sys.executable, "-c", hide_psycopg, "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'yipanqi[postgres]'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
