"""The console's files are package data of forgeline-gateway, so the image has them: the gateway
Dockerfile installs the package from its source (not editable), which copies only what
pyproject.toml's package-data names."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "services" / "gateway"
PACKAGE = GATEWAY / "src" / "forgeline_gateway"


def test_every_console_file_is_package_data() -> None:
    settings = tomllib.loads((GATEWAY / "pyproject.toml").read_text())
    patterns = settings["tool"]["setuptools"]["package-data"]["forgeline_gateway"]
    covered = {path for pattern in patterns for path in PACKAGE.glob(pattern) if path.is_file()}
    files = {path for path in (PACKAGE / "console" / "static").rglob("*") if path.is_file()}

    assert files, "no console files found"
    assert sorted(str(p.relative_to(PACKAGE)) for p in files - covered) == []
    assert {p.name for p in files} >= {"index.html", "main.js", "console.css"}
