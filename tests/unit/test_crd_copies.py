"""crds/ is the single source of truth; manifests/crds/, charts/openmodel/files/crds/ and the
packaged operator/openmodel/data/crds/ are byte-identical copies made by hack/sync-crds.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SYNC = REPO / "hack" / "sync-crds.sh"
SOURCES = sorted((REPO / "crds").glob("*.yaml"))
COPY_DIRS = ("manifests/crds", "charts/openmodel/files/crds", "operator/openmodel/data/crds")
FIX = "run `bash hack/sync-crds.sh`"


def test_there_is_a_crd_to_copy():
    assert [p.name for p in SOURCES] == [
        "apikey.yaml",
        "externalmodel.yaml",
        "modeldeployment.yaml",
    ]
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in SOURCES]
    assert names == [
        "apikeys.openmodel.dev",
        "externalmodels.openmodel.dev",
        "modeldeployments.openmodel.dev",
    ]


@pytest.mark.parametrize("copy_dir", COPY_DIRS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_copy_is_byte_identical(source, copy_dir):
    copy = REPO / copy_dir / source.name
    assert copy.is_file(), f"{copy_dir}/{source.name} is missing: {FIX}"
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy_dir}/{source.name} differs from crds/: {FIX}"
    )


@pytest.mark.parametrize("copy_dir", COPY_DIRS)
def test_no_copy_without_a_source(copy_dir):
    copies = {p.name for p in (REPO / copy_dir).glob("*.yaml")}
    assert copies == {p.name for p in SOURCES}, FIX


def run_sync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SYNC), *args],
        env={**os.environ, "OPENMODEL_REPO_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_sync_check_passes_on_the_repository():
    result = run_sync(REPO, "--check")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    for directory in ("crds", *COPY_DIRS):
        shutil.copytree(REPO / directory, tmp_path / directory)
    return tmp_path


def test_sync_check_names_a_stale_copy_and_sync_repairs_it(scratch):
    stale = scratch / "charts/openmodel/files/crds/modeldeployment.yaml"
    stale.write_text(stale.read_text().replace("maxLength: 512", "maxLength: 513"))

    check = run_sync(scratch, "--check")
    assert check.returncode == 1
    assert "charts/openmodel/files/crds/modeldeployment.yaml differs" in check.stderr
    assert "manifests/crds" not in check.stderr

    fix = run_sync(scratch)
    assert fix.returncode == 0, fix.stderr
    assert stale.read_bytes() == (scratch / "crds/modeldeployment.yaml").read_bytes()
    assert run_sync(scratch, "--check").returncode == 0


def test_sync_removes_a_copy_whose_source_is_gone(scratch):
    orphan = scratch / "manifests/crds/oldkind.yaml"
    orphan.write_text("kind: CustomResourceDefinition\n")
    check = run_sync(scratch, "--check")
    assert check.returncode == 1
    assert "manifests/crds/oldkind.yaml has no source" in check.stderr
    assert orphan.exists()
    assert run_sync(scratch).returncode == 0
    assert not orphan.exists()


def test_sync_creates_missing_copies(scratch):
    (scratch / "manifests/crds/modeldeployment.yaml").unlink()
    assert run_sync(scratch, "--check").returncode == 1
    assert run_sync(scratch).returncode == 0
    assert run_sync(scratch, "--check").returncode == 0


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (PyYAML, and the API
    server's own reader, silently keep the last one)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [key.value for key, _ in node.value]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    assert not twice, f"line {node.start_mark.line + 1}: {twice} written twice in one mapping"
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_key_is_written_twice(source):
    assert yaml.load(source.read_text(), Loader=_UniqueKeyLoader)
