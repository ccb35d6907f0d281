"""environment.yml and pyproject.toml must agree (pyproject is the single source)."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_hands_off_to_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    version = python.split("=")[-1]
    spec = project["requires-python"]
    assert f">={version}" in spec, (version, spec)
    lower = re.search(r">=(\d+\.\d+)", spec).group(1)
    upper = re.search(r"<(\d+\.\d+)", spec).group(1)
    assert lower == version and tuple(map(int, upper.split("."))) > tuple(map(int, version.split(".")))
    pip = next(d for d in deps if isinstance(d, dict))["pip"]
    assert len(pip) == 1 and pip[0].startswith("-e .[")
    extras = pip[0][len("-e .["):-1].split(",")
    assert set(extras) == set(project["optional-dependencies"])
    # no package is listed twice: conda installs only python and pip
    assert all(not isinstance(d, str) or d.split("=")[0] in ("python", "pip") for d in deps)


def test_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert "torch==2.13.0" in deps
    jb = [d for d in deps if d.startswith("jupyter-book")]
    assert jb and "<2" in jb[0]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    block = re.search(r"```(?:bash|sh)\n(.*?)```", readme, re.S).group(1)
    commands = [l.strip() for l in block.splitlines() if l.strip() and not l.startswith("#")]
    assert len(commands) == 2, commands
    assert commands == ["make setup", "make test"]
    assert "make setup" in ci and "make test" in ci
