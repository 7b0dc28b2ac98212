"""``pip install .`` gives working commands: the built wheel, installed into a fresh virtual
environment, runs the jobs from any folder with no checkout in sight.

The wheel is built from the tracked files only (a copy made with ``git ls-files``), so a file
that the package needs but the repository does not track, or that pyproject.toml does not
ship (the configs are package data), fails here. To avoid downloading torch and Ray again, the
fresh environment sees the test environment's dependencies through a ``.pth`` line; that line
adds the folder only, so the test environment's editable install of this project (a finder
hooked in by its own ``.pth`` file) stays out of sight, which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from ncsn_ray.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def _tracked_copy(destination: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv_bin, wheel_path)``: the wheel built from the tracked files, installed in a new venv."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("this test builds the wheel from `git ls-files`; run it in a git checkout")
    root = tmp_path_factory.mktemp("wheel")
    source = _tracked_copy(root / "source")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                            str(root / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("ncsn_on_ray-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "test_environment_dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin", wheel


def test_wheel_ships_the_packages_and_configs_and_no_tests(installed):
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "ncsn_ray/configs/digits.yaml" in names and "ncsn_ray/configs/cifar10-v2.yaml" in names
    assert "ncsn_ray/cli/train.py" in names and "ncsn_core/model.py" in names
    assert not [n for n in names if n.startswith(("tests/", "jobs/", "benchmarks/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for job, command in COMMANDS.items():
        assert f"{command} = ncsn_ray.cli.{job}:main" in text


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_installed_commands_prepare_and_train_from_an_empty_folder(installed, tmp_path):
    bin_dir, _ = installed
    work = tmp_path / "anywhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "RAY_ADDRESS")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")

    where = subprocess.run([str(bin_dir / "python"), "-c", "import ncsn_ray; print(ncsn_ray.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert str(bin_dir.parent) in where and not where.startswith(str(REPO)), f"ncsn_ray imported from {where}"

    usage = subprocess.run(["ncsn-train", "--config", "no-such-config"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=120)
    assert usage.returncode == 2 and "no shipped config named 'no-such-config'" in usage.stderr
    assert "digits" in usage.stderr and "Traceback" not in usage.stderr

    prepared = subprocess.run(["ncsn-prepare", "--dataset", "digits", "--out", "data/digits"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    trained = subprocess.run(["ncsn-train", "--config", "digits", "--data", "data/digits", "--steps", "2",
                              "--checkpoint-every", "2", "--no-preview", "--tracking", "none", "--json"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=500)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2
    assert (work / "runs" / "digits").is_dir() and list((work / "runs" / "digits").glob("checkpoint_*"))
