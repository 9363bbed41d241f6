"""The project's own files agree with each other: set-up files, README commands, CI."""
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    version = python.split("=", 1)[1]
    assert version in SpecifierSet(pyproject()["project"]["requires-python"]), python
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    # The pip section installs this project with the same extras as `make setup`.
    makefile = (ROOT / "Makefile").read_text()
    extras_make = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'", makefile).group(1)
    assert any(re.fullmatch(r'-e "?\.\[' + extras_make + r'\]"?', line) for line in pip), (pip, extras_make)
    for extra in extras_make.split(","):
        assert extra in pyproject()["project"]["optional-dependencies"], extra
    # Nothing pinned in both places (one source of truth): conda lists only python and pip.
    names = {re.split(r"[=<>]", d)[0] for d in deps if isinstance(d, str)}
    assert names == {"python", "pip"}, names


def test_torch_pins():
    deps = pyproject()["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    assert any(d.startswith("faiss-cpu") for d in deps)
    assert any(d.startswith("faiss-gpu") for d in pyproject()["project"]["optional-dependencies"]["gpu"])


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)
    # CI installs nothing of its own (a green CI must not hide a set-up step): `make setup` does it for everyone.
    assert not re.search(r"\b(apt-get|pip|conda)\b", ci), ci


def test_one_python_minimum_everywhere():
    # pyproject's requires-python, the README's set-up line and environment.yml's python say the same minimum.
    minimum = re.fullmatch(r">=(3\.\d+)", pyproject()["project"]["requires-python"]).group(1)
    assert f"Python >= {minimum}" in (ROOT / "README.md").read_text()
    env = (ROOT / "environment.yml").read_text()
    pinned = re.search(r"^\s*-\s*python\s*([<>=]=?)\s*(3\.\d+)", env, re.M)
    assert pinned, env
    version = tuple(int(x) for x in pinned.group(2).split("."))
    assert version >= tuple(int(x) for x in minimum.split(".")), (pinned.group(0), minimum)
