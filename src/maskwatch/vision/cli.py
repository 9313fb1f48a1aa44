"""`maskwatch detect` and `maskwatch bench`.

Heavy imports (OpenCV, ONNX Runtime) happen inside the commands so `maskwatch --help` stays fast.
User errors (bad input, missing model, bad config) end with one `Error: ...` line and exit code 1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path

import click

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def _quiet_opencv() -> None:
    """OpenCV/FFmpeg print warnings for every failed open; our own messages say it better."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@contextlib.contextmanager
def user_errors():
    """Turn expected failures into a one-line `Error: ...` and exit status 1 (no traceback)."""
    from pydantic import ValidationError

    from maskwatch.sources import SourceError
    from maskwatch.vision.classify import ModelCardError, ModelNotFoundError
    from maskwatch.vision.detect import DetectorError

    try:
        yield
    except (SourceError, DetectorError, ModelNotFoundError, ModelCardError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # unwritable output, full disk, ...
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
    except tomllib.TOMLDecodeError as exc:
        raise click.ClickException(f"config file is not valid TOML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise click.ClickException(f"invalid setting {where}: {first.get('msg')}") from None


def settings_from_options(config_file, model_dir, yunet_path, detector, no_gender, detect_every):
    """The config file's settings with the `common_options` given on the command line applied."""
    from maskwatch.config import apply_overrides, load_settings

    over: dict = {"detector": {}, "models": {}}
    if detector:
        over["detector"]["backend"] = detector
    if yunet_path:
        over["detector"]["yunet_path"] = str(yunet_path)
    if model_dir:
        over["models"]["model_dir"] = str(model_dir)
    if detect_every:
        over["detector"]["detect_every"] = detect_every
    if no_gender:
        over["privacy"] = {"gender_enabled": False}
    return apply_overrides(load_settings(config_file), over)


def common_options(f):
    """--detector, --yunet, --model, --config, --no-gender, --detect-every (shared by detect and bench)."""

    @click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        help="TOML config file (default: $MASKWATCH_CONFIG, else built-in defaults).",
    )
    @click.option(
        "--model",
        "model_dir",
        type=click.Path(path_type=Path),
        help="Model directory (NAME.onnx + NAME.json model cards); default: bundled models.",
    )
    @click.option(
        "--yunet",
        "yunet_path",
        type=click.Path(path_type=Path),
        help="Local YuNet ONNX file (default: downloaded once into the user cache).",
    )
    @click.option(
        "--detector",
        type=click.Choice(["yunet", "res10"]),
        help="Face detector backend (default: YuNet when available, else res10).",
    )
    @click.option("--no-gender", is_flag=True, help="Do not compute or show apparent gender.")
    @click.option(
        "--detect-every",
        type=click.IntRange(1, 10),
        default=None,
        help="Videos: run the detector on every Nth frame, moving tracked faces in between (faster; "
        "default: detector.detect_every, 1).",
    )
    @functools.wraps(f)
    def wrapper(*args, config_file, model_dir, yunet_path, detector, no_gender, detect_every, **kwargs):
        _quiet_opencv()
        with user_errors():
            settings = settings_from_options(
                config_file, model_dir, yunet_path, detector, no_gender, detect_every
            )
        return f(*args, settings=settings, detect_every=settings.detector.detect_every, **kwargs)

    return wrapper


def _load_models(settings):
    from maskwatch.vision.classify import AttributeClassifier
    from maskwatch.vision.detect import create_detector

    with user_errors():
        classifier = AttributeClassifier.from_dir(
            settings.models.model_dir, uncertain_threshold=settings.models.uncertain_threshold
        )
        detector = create_detector(settings.detector)
    return detector, classifier


@click.command()
@click.argument("input_spec", metavar="INPUT")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Annotated output: an image file (image input), a folder (folder input) or a video file "
    "(.mp4/.avi; video or camera input).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    help="Write one JSON line per frame here ('-' = stdout; the default when --out is not given).",
)
@click.option("--frames", "max_frames", type=click.IntRange(min=1), help="Stop after N frames.")
@common_options
def detect(
    input_spec: str,
    out: Path | None,
    json_path: Path | None,
    max_frames: int | None,
    settings,
    detect_every: int,
) -> None:
    """Find faces in INPUT and label mask / no_mask / uncertain and apparent gender.

    INPUT is an image, a folder of images, a video file, a camera index (0) or an rtsp/http URL.

    \b
    Examples:
      maskwatch detect group.jpg --out group-annotated.jpg --json group.jsonl
      maskwatch detect clip.mp4 --out clip-annotated.mp4
      maskwatch detect 0 --frames 300 --json -
    """
    import cv2

    from maskwatch.sources import IMAGE_SUFFIXES as SRC_IMAGE_SUFFIXES
    from maskwatch.sources import open_source
    from maskwatch.vision.detect import still_photo_detector
    from maskwatch.vision.draw import annotate
    from maskwatch.vision.pipeline import Pipeline

    with user_errors():
        source = open_source(input_spec, max_retries=10)
    detector, classifier = _load_models(settings)
    if not source.is_sequence:
        detector = still_photo_detector(detector, settings.detector)
    gender = settings.privacy.gender_enabled
    pipe = Pipeline(
        detector,
        classifier,
        track=source.is_sequence,
        reclassify_every=settings.models.reclassify_every,
        gender=gender,
        detect_every=detect_every,
    )
    folder_input = not source.is_sequence and Path(input_spec).is_dir()
    if out is not None:
        suffix = out.suffix.lower()
        if folder_input and suffix in SRC_IMAGE_SUFFIXES:
            raise click.ClickException("--out must be a folder when INPUT is a folder of images")
        if not folder_input and not source.is_sequence and suffix not in SRC_IMAGE_SUFFIXES:
            raise click.ClickException(f"--out must be an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if source.is_sequence and suffix not in VIDEO_FOURCC:
            raise click.ClickException(f"--out must be a video file ({', '.join(VIDEO_FOURCC)})")
    if json_path is None and out is None:
        json_path = Path("-")
    json_out = None
    if json_path is not None:
        with user_errors():
            json_out = sys.stdout if str(json_path) == "-" else open(json_path, "w")  # noqa: SIM115
    writer = None
    counts: Counter[str] = Counter()
    n = 0
    try:
        with user_errors(), source:
            for frame in source:
                result = pipe.process(
                    frame.image, source=frame.source, frame_index=frame.index, timestamp=frame.timestamp
                )
                n += 1
                counts.update(f.mask.label for f in result.faces)
                if json_out is not None:
                    json_out.write(json.dumps(result.to_dict(gender=gender)) + "\n")
                if out is not None:
                    img = annotate(frame.image, result, gender=gender)
                    if source.is_sequence:
                        writer = writer or _video_writer(out, source.fps, img.shape)
                        writer.write(img)
                    else:
                        dest = out / Path(frame.source).name if folder_input else out
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        if not cv2.imwrite(str(dest), img):
                            raise click.ClickException(f"cannot write image {dest}")
                if max_frames is not None and n >= max_frames:
                    break
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
    finally:
        if writer is not None:
            writer.release()
        if json_out is not None and json_out is not sys.stdout:
            json_out.close()
    from maskwatch.types import MASK_LABELS

    faces = sum(counts.values())
    summary = ", ".join(f"{k} {counts[k]}" for k in MASK_LABELS if counts[k])
    click.echo(
        f"{n} frame(s), {faces} face(s){': ' + summary if summary else ''}"
        + (f"; annotated output: {out}" if out else ""),
        err=True,
    )


def _video_writer(path: Path, fps: float | None, shape):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = shape[:2]
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC[path.suffix.lower()]), fps or 25.0, (w, h)
    )
    if not writer.isOpened():
        raise click.ClickException(f"cannot write video {path}")
    return writer


def _parse_size(text: str) -> tuple[int, int] | None:
    if text.lower() == "native":
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 640x480, or 'native'") from None
    if w < 32 or h < 32:
        raise click.BadParameter("size must be at least 32x32")
    return w, h


def letterbox(img, size: tuple[int, int]):
    """`img` scaled to fit inside `size` (width, height), centred on a black canvas."""
    import cv2
    import numpy as np

    w, h = size
    ih, iw = img.shape[:2]
    s = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * s)), max(1, round(ih * s))
    canvas = np.zeros((h, w, 3), np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    canvas[y : y + nh, x : x + nw] = cv2.resize(
        img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    )
    return canvas


def bench_frames(videos: list[Path], total: int, size: tuple[int, int] | None):
    """Yield (frame, decode_seconds, new_scene) for up to `total` frames, `total / len(videos)` from
    each video in turn, letterboxed to `size` (width, height) unless None."""
    from maskwatch.sources import open_source

    per_video = math.ceil(total / len(videos))
    n = 0
    for video in videos:
        with open_source(video, reconnect=False) as src:
            for i in range(per_video):
                if n >= total:
                    return
                t0 = time.perf_counter()
                frame = next(src, None)
                if frame is None:
                    break
                img = frame.image
                if size is not None and (img.shape[1], img.shape[0]) != size:
                    img = letterbox(img, size)
                n += 1
                yield img, time.perf_counter() - t0, i == 0


def write_mosaic(videos: list[Path], dest: Path, frames: int, size: tuple[int, int], grid: int) -> Path:
    """Render an NxN mosaic video (a multi-camera view: several faces per frame) of `frames` frames.

    Cell i plays videos i, i + N*N, ... in a loop. Written as MJPG .avi so decoding it stays cheap.
    """
    import cv2
    import numpy as np

    from maskwatch.sources import open_source

    out_w, out_h = size
    cw, ch = out_w // grid, out_h // grid
    cells = grid * grid
    queues = [
        [videos[j % len(videos)] for j in range(i, max(cells, len(videos)), cells)] for i in range(cells)
    ]
    pos = [0] * cells
    srcs = [open_source(q[0], reconnect=False) for q in queues]
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (out_w, out_h))
    try:
        for _ in range(frames):
            canvas = np.zeros((out_h, out_w, 3), np.uint8)
            for c in range(cells):
                frame = next(srcs[c], None)
                if frame is None:  # this cell's next video (looping)
                    srcs[c].close()
                    pos[c] = (pos[c] + 1) % len(queues[c])
                    srcs[c] = open_source(queues[c][pos[c]], reconnect=False)
                    frame = next(srcs[c], None)
                if frame is not None:
                    y, x = (c // grid) * ch, (c % grid) * cw
                    canvas[y : y + ch, x : x + cw] = letterbox(frame.image, (cw, ch))
            writer.write(canvas)
    finally:
        writer.release()
        for src in srcs:
            src.close()
    return dest


def run_bench(pipe, frames, gender: bool = True) -> dict:
    """Process + draw every (frame, decode_s, new_scene) of `frames`; mean stage times in ms."""
    from maskwatch.vision.draw import annotate

    stages = ("decode", "detect", "classify", "track", "draw", "total")
    sums = dict.fromkeys(stages, 0.0)
    n = faces = classified = 0
    cpu0 = time.process_time()
    for img, decode_s, new_scene in frames:
        if new_scene:
            pipe.reset()
        t1 = time.perf_counter()
        result = pipe.process(img)
        t2 = time.perf_counter()
        annotate(img, result, gender=gender)
        t3 = time.perf_counter()
        sums["decode"] += decode_s
        sums["draw"] += t3 - t2
        sums["total"] += decode_s + t3 - t1
        for k in ("detect", "classify", "track"):
            sums[k] += result.timings_ms[k] / 1e3
        n += 1
        faces += len(result.faces)
        classified += pipe.classified_last
    if n == 0:
        raise click.ClickException("no frame could be decoded from the given videos")
    return {
        "frames": n,
        "fps": round(n / sums["total"], 1),
        "faces_per_frame": round(faces / n, 2),
        "classified_per_frame": round(classified / n, 2),
        "ms_per_frame": {k: round(v * 1e3 / n, 2) for k, v in sums.items()},
        "cpu_ms_per_frame": round((time.process_time() - cpu0) * 1e3 / n, 2),  # all threads; load-independent
    }


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024 / (1024 if sys.platform == "darwin" else 1), 1)


@click.command()
@click.argument("videos", nargs=-1, required=True, metavar="SOURCE...")
@click.option(
    "--cameras",
    type=click.IntRange(1, 64),
    help="Run N streams through the monitoring engine as `serve` does (SOURCEs: files played in real "
    "time, rtsp:// or http:// streams, camera indexes; reused in turn) and print per-camera fps, drops, "
    "latency, CPU per frame and peak RSS.",
)
@click.option(
    "--seconds", default=30.0, show_default=True, type=click.FloatRange(min=1), help="With --cameras."
)
@click.option(
    "--frames",
    "total_frames",
    default=300,
    show_default=True,
    type=click.IntRange(min=1),
    help="Frames in total, spread evenly over the videos.",
)
@click.option(
    "--size",
    "size_text",
    default="640x480",
    show_default=True,
    help="Letterbox every frame to WIDTHxHEIGHT first ('native' keeps the video size).",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the JSON here.")
@click.option(
    "--grid",
    default=1,
    show_default=True,
    type=click.IntRange(1, 4),
    help="Play the videos as an NxN mosaic (a multi-camera view with several faces per frame).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    help="CPU threads for OpenCV and ONNX Runtime (default: OpenCV's choice, ONNX Runtime at most 2).",
)
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="Also run the other detector backend (same frames, same process).",
)
@common_options
def bench(
    videos: tuple[str, ...],
    cameras: int | None,
    seconds: float,
    total_frames: int,
    size_text: str,
    json_path: Path | None,
    grid: int,
    threads: int | None,
    compare: bool,
    settings,
    detect_every: int,
) -> None:
    """Measure end-to-end speed on VIDEO files: decode, detect, track, classify, draw.

    Prints JSON: frames, fps, faces_per_frame, ms_per_frame (decode, detect, classify, track, draw,
    total), and baseline_fps: the same detector classifying every face on every frame, no tracking.

    \b
    Example:
      maskwatch bench ../shared/data/videos/*.mp4 --frames 300 --json bench.json
    """
    if cameras:
        from maskwatch.monitor.bench import run_cameras

        try:
            cam_report = run_cameras(settings, list(videos), cameras, seconds=seconds)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
        text = json.dumps(cam_report, indent=2)
        click.echo(text)
        if json_path:
            json_path.write_text(text + "\n")
        return
    import cv2

    from maskwatch.sources import SourceError, open_source
    from maskwatch.vision.detect import DetectorError, Res10Detector, YuNetDetector, ensure_yunet
    from maskwatch.vision.pipeline import Pipeline

    size = _parse_size(size_text)
    if threads:
        cv2.setNumThreads(threads)
        os.environ["MASKWATCH_ORT_THREADS"] = str(threads)
    files = [Path(v) for v in videos]
    for v in files:
        if not v.is_file():
            raise click.ClickException(f"no such video file: {v}")
        try:
            with open_source(v, reconnect=False) as src:
                ok = next(src, None) is not None
        except SourceError:
            ok = False
        if not ok:
            raise click.ClickException(f"cannot decode video {v} (corrupt or unsupported format)")
    detector, classifier = _load_models(settings)
    gender = settings.privacy.gender_enabled
    every = settings.models.reclassify_every

    tmp = tempfile.TemporaryDirectory(prefix="maskwatch-bench-")
    inputs = list(files)
    if grid > 1:
        inputs = [write_mosaic(inputs, Path(tmp.name) / "mosaic.avi", total_frames, size or (640, 480), grid)]

    def measure(det, track: bool) -> dict:
        pipe = Pipeline(
            det, classifier, track=track, reclassify_every=every, gender=gender, detect_every=detect_every
        )
        run_bench(pipe, bench_frames(inputs[:1], 3, size), gender)  # warm-up: first runs are slow
        return run_bench(pipe, bench_frames(inputs, total_frames, size), gender)

    with tmp:
        main = measure(detector, True)
        baseline = measure(detector, False)
        other = None
        if compare:
            s = settings.detector
            with contextlib.suppress(DetectorError):
                if detector.name == "yunet":
                    other = Res10Detector(score_threshold=s.score_threshold, min_face_px=s.min_face_px)
                elif (path := ensure_yunet(s)) is not None:
                    other = YuNetDetector(path, score_threshold=s.score_threshold, min_face_px=s.min_face_px)
        other_result = measure(other, True) if other is not None else None
    report = {
        "detector": detector.name,
        "models": [c.get("name") for c in classifier.cards],
        "size": list(size) if size else "native",
        "grid": grid,
        "detect_every": detect_every,
        "videos": [v.name for v in files],
        **main,
        "baseline_fps": baseline["fps"],
        "baseline": baseline,
    }
    if other is not None:
        report[other.name] = other_result
    report["cpu_threads"] = cv2.getNumThreads()
    with contextlib.suppress(OSError, AttributeError):
        report["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other processes competing for the CPU
    report["peak_rss_mb"] = _peak_rss_mb()
    text = json.dumps(report, indent=2)
    if json_path is not None:
        json_path.write_text(text + "\n")
    click.echo(text)
