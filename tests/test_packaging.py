"""environment.yml (conda users) must carry exactly the pins of pyproject.toml (pip users)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = {line.strip()[2:].strip().strip('"') for line in (ROOT / "environment.yml").read_text().splitlines()
           if line.startswith("      - ")}
    assert env == pins
