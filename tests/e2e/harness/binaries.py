"""Where the control-plane binaries live.

``hack/build-control-plane.sh`` is the single source of truth for versions: the
bin directory is computed from the version variables at its top, exactly as the
script does, so finding the binaries never starts a (tens of minutes) build.
``OPENMODEL_BIN_DIR`` overrides the location.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"
REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
_VERSION_VARS = ("K8S_VERSION", "ETCD_VERSION", "KWOK_VERSION", "HELM_VERSION")


class BinariesMissing(RuntimeError):
    """The control plane has not been built (or not completely)."""


def _script_versions(script: Path) -> dict[str, str]:
    text = script.read_text()
    versions = {}
    for var in _VERSION_VARS:
        match = re.search(rf"^{var}=(\S+)$", text, re.MULTILINE)
        if not match:
            raise RuntimeError(f"{script}: cannot find {var}=... to locate the bin directory")
        versions[var] = match.group(1)
    return versions


def bin_dir() -> Path:
    """The versioned bin directory (it may not exist yet)."""
    override = os.environ.get("OPENMODEL_BIN_DIR")
    if override:
        return Path(override)
    v = _script_versions(BUILD_SCRIPT)
    cache = Path(os.environ.get("OPENMODEL_CACHE", Path.home() / ".cache" / "openmodel"))
    name = (
        f"k8s-{v['K8S_VERSION']}-etcd-{v['ETCD_VERSION']}"
        f"-kwok-{v['KWOK_VERSION']}-helm-{v['HELM_VERSION']}"
    )
    return cache / "bin" / name


def require_bin_dir() -> Path:
    """The bin directory, or an error saying what is missing and how to build it."""
    directory = bin_dir()
    missing = [name for name in REQUIRED if not os.access(directory / name, os.X_OK)]
    if not (directory / "kwok-stage" / "fast").is_dir():
        missing.append("kwok-stage/fast")
    if missing:
        raise BinariesMissing(
            f"control-plane binaries missing in {directory}: {', '.join(missing)}. "
            f"Build them with: bash {BUILD_SCRIPT.relative_to(REPO_ROOT)} "
            "(a cold build takes tens of minutes; later runs reuse the cache)"
        )
    return directory
