"""Starting the process nodes (``process_node/``) beside a local control plane.

They need root (network namespaces, veths, bind mounts). The image map says which
local directory stands for which image: ``vllm/vllm-openai`` is the vLLM CPU
environment from ``hack/install-vllm-cpu.sh`` when it is installed (without it, pods
asking for that image report ErrImagePull), ``openmodel.test/host`` is the host's
/usr, for the process node's own tests, and ``openmodel/operator`` (any tag) is the
repository's virtualenv: the image's ``/opt/openmodel`` venv (Dockerfile), whose
``bin/python`` has ``openmodel`` and its locked dependencies importable, so the manifests'
``python -m openmodel.gateway`` (or ``python -m openmodel``) runs as rendered. That venv
is ``<repo>/.venv``; in a git worktree without one, the venv of the interpreter running
the harness (the main checkout's), whose editable install imports that checkout's
``openmodel``, not the worktree's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .launcher import Launch
from .nodepool import NodePool

REPO = Path(__file__).resolve().parents[3]
VLLM_IMAGE = "vllm/vllm-openai"
# Both llama.cpp images (:server and :server-cuda) stand for the CPU build that
# hack/install-llama-server.sh makes.
LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp"
# The host's Debian userland (sh, sleep, python3 in /usr/bin) as a small image, for the
# process node's own tests.
HOST_IMAGE = "openmodel.test/host"
OPERATOR_IMAGE = "openmodel/operator"
# Every engine gets its SIGTERM and a few seconds to exit, and a worker caught in an API
# call gets its timeout (spec.API_TIMEOUT): a SIGKILLed node leaves mount points behind.
STOP_TIMEOUT = 45.0


def process_nodes_unavailable() -> str | None:
    """Why pods cannot run as local processes here, or None when they can: a real try
    at what every pod needs (root, a network namespace, a veth), so a machine without
    the privileges fails the tests that need process nodes at once, saying why, instead
    of leaving their pods Pending."""
    if os.geteuid() != 0:
        return "process nodes need root (network namespaces, veths, bind mounts)"
    probe = f"openmodel-probe-{os.getpid()}"
    steps = [
        ["ip", "netns", "add", probe],
        [
            "ip",
            "link",
            "add",
            f"omp{os.getpid() % 100000}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            probe,
        ],
    ]
    try:
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, check=False)
            except OSError as e:
                return f"`{' '.join(step)}` cannot run: {e}"
            if done.returncode != 0:
                return f"`{' '.join(step)}` failed: {done.stderr.strip()}"
        return None
    finally:
        subprocess.run(["ip", "link", "del", f"omp{os.getpid() % 100000}"], capture_output=True)
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def vllm_env_dir() -> Path:
    """Where hack/install-vllm-cpu.sh puts (or would put) the vLLM CPU environment."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "install-vllm-cpu.sh"), "--dir"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return Path(out.stdout.strip())


def llama_server_root() -> Path:
    """Where hack/install-llama-server.sh puts (or would put) the llama-server build."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "install-llama-server.sh"), "--dir"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return Path(out.stdout.strip())


def vllm_env_ready(path: Path) -> bool:
    return (path / ".openmodel-complete").is_file()


def operator_venv() -> Path:
    """The directory standing for the operator's image (see the module docstring)."""
    venv = REPO / ".venv"
    return venv if (venv / "bin" / "python").exists() else Path(sys.prefix)


def image_roots() -> dict[str, Path]:
    roots = {HOST_IMAGE: Path("/usr"), OPERATOR_IMAGE: operator_venv()}
    env = vllm_env_dir()
    if vllm_env_ready(env):
        roots[VLLM_IMAGE] = env
    llama = llama_server_root()
    if vllm_env_ready(llama):
        roots[LLAMACPP_IMAGE] = llama
    return roots


def process_node_launch(kubeconfig: Path, pool: NodePool, root: Path) -> Launch:
    nodes = [f"--node={name}={cidr}" for name, cidr in pool.process_nodes()]
    images = [f"--image={ref}={path}" for ref, path in image_roots().items()]

    def argv(ports: list[int]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "harness.process_node",
            f"--kubeconfig={kubeconfig}",
            f"--root={root}",
            f"--health-port={ports[0]}",
            *nodes,
            *images,
        ]

    return Launch(
        "process-node",
        1,
        argv,
        lambda p: f"http://127.0.0.1:{p[0]}/healthz",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stop_timeout=STOP_TIMEOUT,
    )
