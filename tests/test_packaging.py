"""`pip install .` (not editable) ships conf/ and recipes/ inside the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_installed_package_finds_conf_and_recipes(tmp_path):
    from pathlib import Path

    import shutil

    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    left = [p for p in (repo / "build", repo / "transferkit.egg-info") if not p.exists()]
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(repo)], check=True, capture_output=True, timeout=300)
    finally:  # the build's leftovers in the source tree (a later `pip install .` would reuse stale files)
        for path in left:
            shutil.rmtree(path, ignore_errors=True)
    code = ("from transferkit.cli import app as cli; from transferkit.config.files import package_dir; "
            "import transferkit; print(transferkit.__file__); print(package_dir('conf')); print(cli.recipe_names()); "
            "print(cli.compose_config(['recipe=small_similar']).finetune.strategy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, conf_dir, recipes, strategy = out.stdout.strip().splitlines()[-4:]
    assert module_file.startswith(str(target)) and conf_dir.startswith(str(target))
    assert "small_similar" in recipes and strategy == "freeze"
    # the wheel's metadata carries the licence (PEP 639: pyproject's license and license-files)
    dist_info = next(target.glob("transferkit-*.dist-info"))
    assert (dist_info / "licenses" / "LICENSE").read_bytes() == (repo / "LICENSE").read_bytes()
    assert "License-Expression: Apache-2.0" in (dist_info / "METADATA").read_text().splitlines()


def test_every_config_group_is_a_listed_package():
    """A new conf/ group must be named in pyproject's packages, or setuptools warns and may drop it."""
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    setup = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    groups = {f"transferkit.conf.{d.name}" for d in (repo / "conf").iterdir() if d.is_dir()}
    assert groups <= set(setup["packages"]), sorted(groups - set(setup["packages"]))
    assert groups <= set(setup["package-data"]), sorted(groups - set(setup["package-data"]))
