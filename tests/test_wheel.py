"""The built distributions carry the whole package: every module and every shipped strategy of ``gates/``.

Builds the sdist and, from it, the wheel with ``python -m build`` (as ``.ci/run`` and a release do), from a copy of
the checkout so no build folder lands in the repository. The build fetches setuptools from the package index into
an isolated environment, as every pip build does. ``.ci/run`` then installs that wheel outside the repository and
runs the demo study with it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Folders a build never reads; everything else in the checkout is copied, so a new build input is not forgotten.
NOT_BUILD_INPUTS = ("__pycache__", "*.pyc", ".git", "build", "dist", "*.egg-info", "results", "tests", "docs",
                    "benchmarks", "sample_fcs", ".pytest_cache", ".ruff_cache", ".hypothesis")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*NOT_BUILD_INPUTS))
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return tmp / "dist"


@pytest.mark.slow
def test_every_shipped_strategy_and_module_is_in_the_wheel(dist):
    (wheel,) = dist.glob("cytopipe-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    strategies = _files(REPO / "gates")
    assert strategies, "gates/ holds no strategy"
    for name, data in strategies.items():
        assert members.get(f"cytopipe/strategies/{name}") == data, f"gates/{name} is not in {wheel.name}"
    shipped = {m for m in members if m.startswith("cytopipe/strategies/")}
    assert shipped == {f"cytopipe/strategies/{name}" for name in strategies}, "the wheel ships a stale strategy"
    for name, data in _files(REPO / "cytopipe").items():
        # A missing module means a subpackage absent from [tool.setuptools] packages in pyproject.toml; a missing
        # data file, a pattern absent from [tool.setuptools.package-data].
        assert members.get(f"cytopipe/{name}") == data, f"cytopipe/{name} is not in {wheel.name}"


@pytest.mark.slow
def test_the_sdist_holds_the_sources_the_wheel_was_built_from(dist):
    (sdist,) = dist.glob("cytopipe-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()}
    expected = {"pyproject.toml", "README.md"} | {f"gates/{n}" for n in _files(REPO / "gates")} \
        | {f"cytopipe/{n}" for n in _files(REPO / "cytopipe")}
    assert expected <= names, f"missing from {sdist.name}: {sorted(expected - names)}"
