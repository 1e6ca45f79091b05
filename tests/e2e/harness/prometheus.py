"""The real Prometheus server (hack/build-prometheus.sh builds it from its Go module) as a
test-started process scraping static targets every second, and its query API."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .operator import REPO, ChildProcess, free_port, spawn, wait_until_answering
from .wait import NotYet, wait_for


def prometheus_binary() -> Path:
    """Built once and cached (seconds once the Go caches are warm)."""
    built = subprocess.run(
        ["bash", str(REPO / "hack" / "build-prometheus.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return Path(built.stdout.strip().splitlines()[-1]) / "prometheus"


@dataclass
class PrometheusProcess(ChildProcess):
    url: str = ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector; AssertionError when Prometheus refuses it."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(address, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer.get("status") == "success", (promql, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_until_scraped(self, jobs: list[str], timeout: float = 60.0) -> None:
        """Every job's targets up and scraped at least twice (so rate() has two samples)."""

        def scraped() -> bool | NotYet:
            ups = {r["metric"]["job"]: r["value"][1] for r in self.query("up")}
            counts = {
                r["metric"]["job"]: float(r["value"][1])
                for r in self.query("count_over_time(up[1m])")
            }
            ready = all(ups.get(j) == "1" and counts.get(j, 0) >= 2 for j in jobs)
            return ready or NotYet((ups, counts))

        wait_for(scraped, timeout, f"Prometheus to scrape {jobs}")


def start_prometheus(workdir: Path, targets: dict[str, str]) -> PrometheusProcess:
    """`targets`: job name -> `host:port` whose /metrics is scraped every second."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [address]}]}
            for job, address in targets.items()
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        str(prometheus_binary()),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log_path = workdir / "prometheus.log"
    process = PrometheusProcess(spawn(argv, dict(os.environ), log_path), log_path)
    process.url = f"http://127.0.0.1:{port}"
    wait_until_answering(process, f"{process.url}/-/ready", "prometheus")
    return process
