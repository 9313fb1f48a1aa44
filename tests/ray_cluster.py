"""A real local Ray cluster on 127.0.0.1 for tests: a head and more nodes, each `ray start --block` in
its own process group with its own ports and temp dir, so it is stopped (or one node killed) by its
process ids and never touches another Ray cluster on the machine (`ray stop` would stop them all)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from smtp_sink import free_port

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class LocalRayCluster:
    address: str
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def kill_node(self, index: int = 1) -> None:
        """SIGKILL node `index` (0 = the head) with every process it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.nodes[index].pid, signal.SIGKILL)
        self.nodes[index].wait(10)


def _ports() -> list[str]:
    args = []
    for opt in (
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--dashboard-agent-grpc-port",
        "--dashboard-agent-listen-port",
    ):
        args += [opt, str(free_port())]
    return args


def _alive_nodes(address: str) -> int:
    code = (
        "import ray; ray.init(address=%r, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run([sys.executable, "-c", code % address], capture_output=True, text=True, timeout=60)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


@contextlib.contextmanager
def local_ray_cluster(tmp_path: Path, nodes: int = 2, cpus_per_node: int = 1) -> Iterator[LocalRayCluster]:
    """A cluster of `nodes` nodes (1 head) with `cpus_per_node` CPUs each; yields it once all are up."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cluster = LocalRayCluster(address=f"127.0.0.1:{port}")
    common = ["--num-cpus", str(cpus_per_node), "--block", "--disable-usage-stats"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    logs = tmp_path / "ray-logs"
    logs.mkdir(exist_ok=True)
    try:
        for i in range(nodes):
            if i == 0:
                args = [
                    "--head",
                    "--port",
                    str(port),
                    "--node-ip-address",
                    "127.0.0.1",
                    "--temp-dir",
                    temp,
                    "--include-dashboard=false",
                ]
            else:
                args = ["--address", cluster.address, "--node-ip-address", "127.0.0.1"]
            log = open(logs / f"node{i}.log", "w")  # noqa: SIM115 (closed with the process)
            cluster.nodes.append(
                subprocess.Popen(
                    [RAY, "start", *args, *common, *_ports()],
                    stdout=log,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
            )
            if i == 0:
                time.sleep(5)
        deadline = time.monotonic() + 90
        while _alive_nodes(cluster.address) < nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray cluster did not come up; logs in {logs}")
            time.sleep(2)
        yield cluster
    finally:
        for i in reversed(range(len(cluster.nodes))):
            cluster.kill_node(i)
        shutil.rmtree(temp, ignore_errors=True)
