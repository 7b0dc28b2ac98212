"""The install a user runs is the install CI tests: README, .ci/run and the lock agree.

Fast, offline checks (no pip run): the README's Quickstart installs against the lock, .ci/run
installs and tests with exactly the README's commands in a fresh virtual environment, and
the lock pins every dependency pyproject.toml declares at a version inside its range (a
dependency changed without refreshing the lock fails here).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "constraints.txt"


def _quickstart_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            commands += [part.strip() for part in line.split("&&")]
    return commands


def _lock_pins() -> dict[str, list[tuple[str, str]]]:
    """``{name: [(version, marker), ...]}`` from the lock (one entry per marker variant)."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;]+)\s*(?:;\s*(.*))?$", line)
        assert match, f"unexpected line in {LOCK.name}: {line!r}"
        name, version, marker = match.groups()
        pins.setdefault(canonicalize_name(name), []).append((version, marker or ""))
    return pins


def test_readme_installs_against_the_lock():
    installs = [c for c in _quickstart_commands() if c.startswith("pip install")]
    assert installs == [
        "pip install -c requirements/constraints.txt -e .",
        'pip install -c requirements/constraints.txt -e ".[test]"',
    ]


def test_ci_builds_a_fresh_venv_and_runs_the_readme_commands():
    script = (REPO / ".ci" / "run").read_text()
    commands = _quickstart_commands()
    test_install = 'pip install -c requirements/constraints.txt -e ".[test]"'
    test_command = next(c for c in commands if "pytest" in c)
    assert "-m venv" in script and "mktemp" in script, ".ci/run must create a new virtual environment each run"
    assert "--system-site-packages" not in script
    lines = [line.strip() for line in script.splitlines() if not line.strip().startswith("#")]
    assert test_install in lines, f".ci/run does not install as the README says ({test_install})"
    assert test_command in lines, f".ci/run does not run the README's test command ({test_command})"
    assert lines.index(test_install) < lines.index(test_command)


def test_lock_pins_every_declared_dependency_inside_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pins = _lock_pins()
    environments = [dict(default_environment(), python_full_version=v, python_version=v.rsplit(".", 1)[0])
                    for v in ("3.10.13", "3.11.7", "3.12.1")]
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is declared in pyproject.toml but not pinned in the lock"
        for env in environments:
            chosen = [v for v, marker in pins[name] if not marker or Requirement(f"x; {marker}").marker.evaluate(env)]
            assert len(chosen) == 1, f"{name}: {len(chosen)} pins apply on Python {env['python_full_version']}"
            assert requirement.specifier.contains(chosen[0], prereleases=True), (
                f"the lock pins {name}=={chosen[0]}, outside pyproject.toml's {requirement}; refresh the lock"
            )
