"""`maskwatch batch` throughput: local processes and a real local Ray cluster, each setting run N times.

    python tools/bench_batch.py ../shared/data/videos [--runs 3] [--every-nth 5] [--chunk-seconds 5]
        [--settings local1,local2,ray1,ray2] [--json FILE]

`localK`: `--workers K`; `rayK`: a cluster of K nodes x 1 CPU on 127.0.0.1 (tests/ray_cluster.py: `ray
start --head` and `ray start --address`), a fresh one for every run (no warm workers carried over). Every
run writes into a fresh output folder (nothing is resumed) and its frames/s is `batch`'s own: analysed
frames over the wall time from starting the workers to the last report. Prints one JSON object: per
setting each run's figures, the median frames/s, the load average before the setting, and the ratios of
the medians (ray2 / ray1, local2 / local1). Settings run one after another, never side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ray_cluster import local_ray_cluster  # noqa: E402

YUNET = Path("../shared/models/face_detection_yunet.onnx")
MASKWATCH = str(Path(sys.executable).with_name("maskwatch"))


def one_run(inputs: list[str], args: argparse.Namespace, where: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as out:
        cmd = [MASKWATCH, "batch", *inputs, "--out", out, "--every-nth", str(args.every_nth)]
        cmd += ["--chunk-seconds", str(args.chunk_seconds), *where]
        if YUNET.is_file():
            cmd += ["--detector", "yunet", "--yunet", str(YUNET)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: summary[k] for k in ("videos", "frames", "seconds", "frames_per_s")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--every-nth", type=int, default=5)
    ap.add_argument("--chunk-seconds", type=float, default=5.0)
    ap.add_argument("--settings", default="local1,local2,ray1,ray2")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    report: dict = {"every_nth": args.every_nth, "chunk_seconds": args.chunk_seconds, "settings": {}}
    for name in args.settings.split(","):
        kind, count = name.rstrip("0123456789"), int(name[len(name.rstrip("0123456789")) :])
        if kind not in ("local", "ray"):
            raise SystemExit(f"unknown setting {name!r}: localK or rayK")
        load = os.getloadavg()[0]
        runs = []
        for _ in range(args.runs):
            with contextlib.ExitStack() as stack:
                where = ["--workers", str(count)]
                if kind == "ray":
                    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ray-")))
                    cluster = stack.enter_context(local_ray_cluster(tmp, nodes=count, cpus_per_node=1))
                    where = ["--ray", cluster.address]
                runs.append(one_run(args.inputs, args, where))
        fps = [r["frames_per_s"] for r in runs]
        report["settings"][name] = {
            "load_before": round(load, 2),
            "runs": runs,
            "median_frames_per_s": statistics.median(fps),
        }
        print(name, json.dumps(report["settings"][name]), file=sys.stderr, flush=True)
    s = report["settings"]
    for kind in ("ray", "local"):
        if f"{kind}1" in s and f"{kind}2" in s:
            ratio = s[f"{kind}2"]["median_frames_per_s"] / s[f"{kind}1"]["median_frames_per_s"]
            report[f"{kind}2_over_{kind}1"] = round(ratio, 2)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
