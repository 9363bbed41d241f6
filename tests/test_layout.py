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
    extras_make = re.search(r"pip install -q -c constraints.txt -e '\.\[([a-z,]+)\]'", makefile).group(1)
    assert any(re.fullmatch(r'-e "?\.\[' + extras_make + r'\]"?', line) for line in pip), (pip, extras_make)
    assert "-c constraints.txt" in pip  # the same exact versions
    for extra in extras_make.split(","):
        assert extra in pyproject()["project"]["optional-dependencies"], extra
    # Nothing pinned in both places (one source of truth): conda lists only python and pip.
    names = {re.split(r"[=<>]", d)[0] for d in deps if isinstance(d, str)}
    assert names == {"python", "pip"}, names


def constraints():
    """{name: version} of constraints.txt (the exact versions `make setup` installs)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_library_states_ranges_and_our_machines_pin_them():
    from packaging.requirements import Requirement

    project = pyproject()["project"]
    pins = constraints()
    # The wheels on our machines' disks (README): torch and torchvision pinned here, not in the library.
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    extras = project["optional-dependencies"]
    for spec in [*project["dependencies"], *(d for k, v in extras.items() if k != "gpu" for d in v)]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{spec}: a range, not a pin"
        assert name in pins, f"{spec}: not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{spec}: constraints.txt has {pins[name]}"
    assert [Requirement(d).name for d in project["dependencies"]] == ["torch", "numpy"]  # the core: MemVir needs
    assert any(d.startswith("faiss-gpu") for d in extras["gpu"])


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


def test_every_profile_a_file_names_exists():
    """A profile retired or renamed leaves no pointer to it: every `configs/<name>.yml` and `PROFILE=<name>` that
    the library, the profiles, the chapters, the book, the README or the Makefile names is a file (the tests' own
    skeletons aside; `PROFILE=P` is the README's placeholder)."""
    sources = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "memvir").rglob("*.py"),
               *(ROOT / "configs").glob("*.yml"), *(ROOT / "notebooks").glob("*.py"), *(ROOT / "book").glob("*.md")]
    named = {(path.relative_to(ROOT), m) for path in sources
             for m in re.findall(r"configs/([A-Za-z0-9_]+)\.yml|PROFILE=([a-z0-9_]+)\b", path.read_text())}
    assert named  # the pattern finds something, so an empty result below means something
    named = {(path, file or name) for path, (file, name) in named}
    missing = sorted(f"{path}: configs/{m}.yml" for path, m in named if not (ROOT / "configs" / f"{m}.yml").is_file())
    assert not missing, missing
