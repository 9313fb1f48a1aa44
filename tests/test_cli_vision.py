"""`maskwatch detect` and `maskwatch bench` end to end, including every bad-input path."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from maskwatch.cli import main
from vision_helpers import make_tiny_model

VIDEO = "videos/916241958_opencv_mask_detection__mask.mp4"
SCENE = "scenes/dev/images/maksssksksss1.jpg"  # several people, most masked


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def cli(model_dir, yunet_path):
    def invoke(*args, model=True, yunet=True):
        extra = (["--model", str(model_dir)] if model else []) + (
            ["--yunet", str(yunet_path)] if yunet else []
        )
        return CliRunner().invoke(main, [*args, *extra])

    return invoke


def assert_clean_error(result, text):
    assert result.exit_code == 1, result.output
    assert f"Error: {text}" in result.output, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # no exception escaped


def test_detect_photo_with_several_people(cli, shared_data, tmp_path):
    out, js = tmp_path / "out.jpg", tmp_path / "faces.jsonl"
    r = cli("detect", str(shared_data / SCENE), "--out", str(out), "--json", str(js))
    assert r.exit_code == 0, r.output
    img = cv2.imread(str(out))
    assert img.shape == cv2.imread(str(shared_data / SCENE)).shape
    (line,) = js.read_text().splitlines()
    d = json.loads(line)
    assert len(d["faces"]) >= 3 and d["frame_size"] == [400, 156]
    face = d["faces"][0]
    assert set(face) >= {"box", "score", "landmarks", "track_id", "mask", "gender"}
    assert face["track_id"] is None  # single images are not tracked
    assert "face(s)" in r.output


def test_detect_prints_json_without_out(cli, shared_data):
    r = cli("detect", str(shared_data / SCENE), "--no-gender")
    assert r.exit_code == 0
    d = json.loads(r.stdout.splitlines()[0])
    assert d["faces"] and "gender" not in d["faces"][0]


def test_detect_folder(cli, shared_data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("maksssksksss1.jpg", "maksssksksss101.jpg"):
        (folder / name).write_bytes((shared_data / "scenes/dev/images" / name).read_bytes())
    r = cli("detect", str(folder), "--out", str(tmp_path / "out"), "--json", str(tmp_path / "f.jsonl"))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "maksssksksss1.jpg",
        "maksssksksss101.jpg",
    ]
    assert len((tmp_path / "f.jsonl").read_text().splitlines()) == 2


def test_detect_video(cli, shared_data, tmp_path):
    out, js = tmp_path / "out.avi", tmp_path / "v.jsonl"
    r = cli("detect", str(shared_data / VIDEO), "--out", str(out), "--json", str(js), "--frames", "15")
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in js.read_text().splitlines()]
    assert len(lines) == 15 and len({f["track_id"] for x in lines for f in x["faces"]}) == 1
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 15 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 388
    cap.release()


def test_bench_json_keys(cli, shared_data, tmp_path):
    out = tmp_path / "bench.json"
    r = cli("bench", str(shared_data / VIDEO), "--frames", "8", "--json", str(out))
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert json.loads(r.stdout) == d
    assert {"frames", "fps", "faces_per_frame", "ms_per_frame", "baseline_fps"} <= set(d)
    assert set(d["ms_per_frame"]) == {"decode", "detect", "classify", "track", "draw", "total"}
    assert d["frames"] == 8 and d["fps"] > 0 and d["detector"] == "yunet" and d["size"] == [640, 480]
    assert d["res10"]["frames"] == 8 and d["peak_rss_mb"] > 0


def test_bench_grid_mosaic(cli, shared_data):
    r = cli(
        "bench",
        str(shared_data / VIDEO),
        str(shared_data / "videos/Gituatu_face-mask-detection__mask.mp4"),
        "--frames",
        "4",
        "--grid",
        "2",
        "--no-compare",
        "--detect-every",
        "2",
        "--threads",
        "1",
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["detect_every"] == 2 and d["cpu_threads"] == 1
    assert d["grid"] == 2 and d["faces_per_frame"] >= 3 and "res10" not in d


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "bad.jpg").write_bytes(b"\x89PNG garbage") and d / "bad.jpg", "cannot decode image"),
        (lambda d: d / "missing.jpg", "no such file"),
        (lambda d: "rtsp://127.0.0.1:9/x", "cannot open stream rtsp://127.0.0.1:9/x"),
        (lambda d: "97", "cannot open camera 97"),
    ],
)
def test_detect_bad_input(cli, tmp_path, make, message):
    assert_clean_error(cli("detect", str(make(tmp_path))), message)


def test_no_model_installed(cli, shared_data, tmp_path):
    empty = tmp_path / "nomodel"
    empty.mkdir()
    r = cli("detect", str(shared_data / SCENE), "--model", str(empty), model=False)
    assert_clean_error(r, "no attribute model")
    r = cli("bench", str(shared_data / VIDEO), "--model", str(empty), model=False)
    assert_clean_error(r, "no attribute model")


def test_bad_options(cli, shared_data, tmp_path):
    assert_clean_error(cli("bench", str(tmp_path / "nope.mp4")), "no such video file")
    (tmp_path / "bad.mp4").write_bytes(b"x" * 1000)
    assert_clean_error(cli("bench", str(tmp_path / "bad.mp4")), "cannot decode video")
    assert_clean_error(
        cli("detect", str(shared_data / SCENE), "--out", str(tmp_path / "x.mp4")),
        "--out must be an image file",
    )
    assert_clean_error(
        cli("detect", str(shared_data / SCENE), "--config", str(tmp_path / "none.toml")),
        "config file not found",
    )
    (tmp_path / "broken.toml").write_text("[detector\nx =")
    assert_clean_error(
        cli("detect", str(shared_data / SCENE), "--config", str(tmp_path / "broken.toml")),
        "config file is not valid TOML",
    )
    (tmp_path / "c.toml").write_text("[detector]\nscore_threshold = 3\n")
    assert_clean_error(
        cli("detect", str(shared_data / SCENE), "--config", str(tmp_path / "c.toml")),
        "invalid setting detector.score_threshold",
    )
    r = cli("detect", str(shared_data / SCENE), "--yunet", str(tmp_path / "none.onnx"), yunet=False)
    assert_clean_error(r, "YuNet model not found")


def test_real_process_no_traceback(tmp_path, model_dir):
    """The installed console entry point: a bad input ends with one line on stderr."""
    bad = tmp_path / "broken.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    entry = "from maskwatch.cli import main; main()"
    cmd = [sys.executable, "-c", entry, "detect", str(bad), "--model", str(model_dir), "--detector", "res10"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip() == f"Error: cannot decode image {bad} (corrupt or not an image)"
