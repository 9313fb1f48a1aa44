"""`maskwatch batch` throughput: local processes and a real local Ray cluster, each setting run N times.

    python tools/bench_batch.py ../shared/data/videos [--runs 3] [--every-nth 5] [--chunk-seconds 5]
        [--settings local1,local2,ray1,ray2,apart2] [--json FILE]

`localK`: `--workers K`; `apartK`: K independent `--workers 1` batches side by side (nothing shared:
what K cores give at best on this machine's hardware, the ceiling of the other settings); `rayK`: a
cluster of K nodes x 1 CPU on 127.0.0.1 (tests/ray_cluster.py: `ray start --head` and `ray start
--address`), a fresh one for every run (no warm workers carried over). Every run writes into a fresh
output folder (nothing is resumed) and its frames/s is `batch`'s own: analysed frames over the wall time
from starting the workers to the last report. Prints one JSON object: per setting each run's figures
(with the load average before it), the median frames/s, and the ratios of the medians (ray2 / ray1,
local2 / local1, apart2 / local1). Runs never overlap except apartK's own; they are interleaved
(setting after setting, N rounds) so that a change in the machine's load hits every setting alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ray_cluster import local_ray_cluster  # noqa: E402
from web_bench import print_report  # noqa: E402

YUNET = Path("../shared/models/face_detection_yunet.onnx")
MASKWATCH = str(Path(sys.executable).with_name("maskwatch"))


def batch_command(inputs: list[str], args: argparse.Namespace, out: str, where: list[str]) -> list[str]:
    cmd = [MASKWATCH, "batch", *inputs, "--out", out, "--every-nth", str(args.every_nth)]
    cmd += ["--chunk-seconds", str(args.chunk_seconds), *where]
    if YUNET.is_file():
        cmd += ["--detector", "yunet", "--yunet", str(YUNET)]
    return cmd


def one_run(inputs: list[str], args: argparse.Namespace, where: list[str], side_by_side: int = 1) -> dict:
    """One batch (or `side_by_side` identical, independent single-worker batches at once: frames and
    frames/s are their sums, seconds the longest)."""
    with contextlib.ExitStack() as stack:
        outs = [
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-batch-"))
            for _ in range(side_by_side)
        ]
        procs = [
            subprocess.Popen(
                batch_command(inputs, args, out, where),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for out in outs
        ]
        summaries = []
        for p in procs:
            stdout, _ = p.communicate()
            if p.returncode:
                raise SystemExit(f"batch failed ({p.returncode})")
            summaries.append(json.loads(stdout.strip().splitlines()[-1]))
    return {
        "videos": summaries[0]["videos"],
        "frames": sum(s["frames"] for s in summaries),
        "seconds": max(s["seconds"] for s in summaries),
        "frames_per_s": round(sum(s["frames_per_s"] for s in summaries), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--every-nth", type=int, default=5)
    ap.add_argument("--chunk-seconds", type=float, default=5.0)
    ap.add_argument("--settings", default="local1,local2,ray1,ray2,apart2")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    report: dict = {"every_nth": args.every_nth, "chunk_seconds": args.chunk_seconds, "settings": {}}
    names = args.settings.split(",")
    parsed = {name: re.fullmatch(r"(local|ray|apart)([1-9]\d*)", name) for name in names}
    if bad := [name for name, m in parsed.items() if m is None]:
        raise SystemExit(f"unknown setting(s) {', '.join(bad)}: localK, rayK or apartK")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.runs):  # interleaved, so a drift in the machine's load hits every setting alike
        for name in names:
            kind, count = parsed[name][1], int(parsed[name][2])
            with contextlib.ExitStack() as stack:
                where = ["--workers", "1" if kind == "apart" else str(count)]
                if kind == "ray":
                    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ray-")))
                    cluster = stack.enter_context(local_ray_cluster(tmp, nodes=count, cpus_per_node=1))
                    where = ["--ray", cluster.address]
                    time.sleep(5)  # the nodes' agents finish starting (their CPU is not the batch's)
                load = os.getloadavg()[0]
                run = one_run(args.inputs, args, where, count if kind == "apart" else 1)
                run["load_before"] = round(load, 2)
            runs[name].append(run)
            print(name, json.dumps(run), file=sys.stderr, flush=True)
    for name in names:
        fps = [r["frames_per_s"] for r in runs[name]]
        report["settings"][name] = {"runs": runs[name], "median_frames_per_s": statistics.median(fps)}
    s = report["settings"]
    for two, one in (("ray2", "ray1"), ("local2", "local1"), ("apart2", "local1")):
        if two in s and one in s:
            ratio = s[two]["median_frames_per_s"] / s[one]["median_frames_per_s"]
            report[f"{two}_over_{one}"] = round(ratio, 2)
    print_report(report, args.json_out)
    return report


if __name__ == "__main__":
    main()
