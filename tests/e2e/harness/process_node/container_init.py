"""The container's first process: mounts, then exec of the command as rendered.

Started by the process node as ``ip netns exec <pod netns> python -m
harness.process_node.container_init SPEC.json``. ``ip netns exec`` gives it a private
mount namespace, so the bind mounts below (a PVC's directory at the path the pod spec
names, an emptyDir at /dev/shm, ...) are seen by the engine alone, as in a container.
Then it replaces itself with the container's command (PATH lookup in the image's
``bin``), so the pid the process node watches is the engine's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384


def _mount(source: str, target: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, outermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing[::-1]


def open_source(source: str, target: str) -> int:
    """An O_PATH descriptor of ``source``: bound through ``/proc/self/fd/N``, it stays
    reachable after an earlier mount covered its path (a volume mounted on /tmp covers
    the sources the node keeps under the host's /tmp)."""
    try:
        return os.open(source, os.O_PATH)
    except FileNotFoundError:
        raise OSError(2, f"mount source {source} (for {target}) does not exist") from None


def bind(source_fd: int, target: str, read_only: bool, created: list[str]) -> None:
    """Bind the opened source at ``target``; mount points made on the host's filesystem
    (which stands for the image's) are appended to ``created`` so the node can remove
    them."""
    source = f"/proc/self/fd/{source_fd}"
    dst = Path(target)
    created.extend(str(p) for p in _missing_ancestors(dst))
    if Path(source).is_dir():
        dst.mkdir(parents=True, exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.touch(exist_ok=True)
    _mount(source, target, MS_BIND | MS_REC)
    if read_only:
        _mount(source, target, MS_BIND | MS_REMOUNT | MS_RDONLY)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    created: list[str] = []
    # Opened now: the node's files may be under a directory a mount below covers (/tmp).
    with Path(spec_path).with_suffix(".created").open("w") as record:
        try:
            sources = [open_source(m["source"], m["target"]) for m in spec["mounts"]]
            for mount, source_fd in zip(spec["mounts"], sources, strict=True):
                bind(source_fd, mount["target"], mount["readOnly"], created)
                os.close(source_fd)
        finally:
            record.write("".join(f"{path}\n" for path in created))
    env: dict[str, str] = spec["env"]
    os.chdir(spec.get("workingDir") or "/")
    argv: list[str] = spec["argv"]
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except OSError as error:
        # What a runtime reports as "StartError": the log carries it, exit 128.
        print(f"process node: cannot start the container: {error}", file=sys.stderr)
        sys.exit(128)
