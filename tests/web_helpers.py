"""Helpers for the web tests: settings for a test app, real face scenes, fake-webcam .y4m files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from maskwatch.config import Settings

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
BUNDLED_MODELS = ROOT / "src" / "maskwatch" / "models"
MASKED = "mask/facemask12k/test/with_mask/test_45.jpg"  # relative to ../shared/data
UNMASKED = "mask/facemask12k/test/without_mask/test_1148.jpg"
PASSWORD = "correct horse battery"
FAST_ALERTS = {"min_frames": 3, "min_seconds": 0.0, "min_confidence": 0.6}  # alert settings for quick tests
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright's own browsers are never installed
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Debian chromium at {CHROMIUM}")
browser_test = [pytest.mark.browser, needs_chromium]  # a module's `pytestmark`
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--use-fake-ui-for-media-stream",  # camera permission granted, a fake camera device
    "--use-fake-device-for-media-stream",
]


def launch_chromium(playwright, *extra_args: str):
    """Headless Debian Chromium through Playwright (`extra_args`: e.g. a fake-webcam file)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args]
    )


def bundled_models() -> bool:
    """True once trained attribute models are shipped in src/maskwatch/models."""
    return any(p.with_suffix(".onnx").is_file() for p in BUNDLED_MODELS.glob("*.json"))


def web_settings(tmp_path: Path, *, model_dir: Path | None, yunet: Path | None, **extra) -> Settings:
    detector = {"backend": "yunet", "yunet_path": str(yunet)} if yunet else {"backend": "res10"}
    data = {
        "data_dir": str(tmp_path / "data"),
        "detector": {**detector, "allow_download": False},
        "models": {"model_dir": str(model_dir) if model_dir else None},
        **extra,
    }
    return Settings.model_validate(data)


def make_app(
    tmp_path: Path, model_dir: Path | None, *, users: dict[str, str] | None = None, yunet="shared", **extra
):
    """(app, store): a test app on a real SQLite store with a real alert engine and mail worker, no
    background jobs; `users` {name: password} (default: admin); `yunet`: "shared" (../shared's copy),
    a path, or None (res10)."""
    from maskwatch.alerts import AlertEngine, MailWorker
    from maskwatch.store import Store
    from maskwatch.web import create_app

    settings = web_settings(
        tmp_path, model_dir=model_dir, yunet=shared_yunet() if yunet == "shared" else yunet, **extra
    )
    store = Store.from_settings(settings)
    for name, password in (users if users is not None else {"admin": PASSWORD}).items():
        store.add_user(name, password)
    app = create_app(
        settings,
        store=store,
        alerts=AlertEngine(settings, store),
        mailer=MailWorker(settings, store),
        start_background=False,
    )
    return app, store


def shared_dir() -> Path | None:
    import os

    d = Path(os.environ.get("MASKWATCH_SHARED", ROOT.parent / "shared"))
    return d if (d / "data").is_dir() else None


def _tile(img: np.ndarray, side: int = 200) -> np.ndarray:
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)


def _hopper_tiles() -> dict[str, np.ndarray]:
    """Fallback without ../shared: Grace Hopper's photo shipped with matplotlib, and the same face with a
    synthetic mask drawn by maskwatch.train.synth."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    path = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg" if spec else None
    if path is None or not path.is_file():
        pytest.skip("no face photos: ../shared is absent and matplotlib's sample photo is missing")
    from maskwatch.train.data import DEFAULT_LANDMARKS
    from maskwatch.train.synth import draw_mask

    img = cv2.imread(str(path))
    x1, y1, x2, y2 = 182.8, 122.8, 349.6, 330.3  # the face (res10 box)
    cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 1.25
    face = _tile(img[int(cy - s / 2) : int(cy + s / 2), int(cx - s / 2) : int(cx + s / 2)])
    landmarks = (DEFAULT_LANDMARKS + np.array([0, 0.06])) * 200  # this crop sits a little higher
    masked = draw_mask(face, landmarks, np.random.default_rng(2), rgb=False)
    return {"masked": masked, "unmasked": face, "real": False}


def face_tiles() -> dict:
    """{"masked": BGR tile, "unmasked": BGR tile, "real": bool}: two real face photos from ../shared
    (one masked, one not), else the fallback above (`real` False: a synthetic mask)."""
    shared = shared_dir()
    if shared is None:
        return _hopper_tiles()
    return {
        "masked": _tile(cv2.imread(str(shared / "data" / MASKED))),
        "unmasked": _tile(cv2.imread(str(shared / "data" / UNMASKED))),
        "real": True,
    }


def scene(tiles: dict, *, faces: tuple[str, ...] = ("masked", "unmasked"), size=(640, 480)) -> np.ndarray:
    """The face tiles side by side on a plain 640x480 canvas (BGR)."""
    w, h = size
    canvas = np.full((h, w, 3), 190, np.uint8)
    n = len(faces)
    for i, key in enumerate(faces):
        tile = tiles[key]
        x = int((i + 0.5) * w / n - tile.shape[1] / 2)
        y = (h - tile.shape[0]) // 2
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return canvas


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """An MJPG .avi of `frames` (BGR, all one size): a video file to configure as a server camera."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    """A YUV4MPEG2 (I420) file: Chromium's fake webcam plays it in a loop."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def shared_yunet() -> Path | None:
    import os

    shared = Path(os.environ.get("MASKWATCH_SHARED", ROOT.parent / "shared"))
    p = shared / "models" / "face_detection_yunet.onnx"
    return p if p.is_file() else None


def login(client, user: str = "admin", password: str = PASSWORD):
    """Log a TestClient in through the real login form (CSRF token from the page)."""
    page = client.get("/login")
    token = csrf_from(page.text)
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )


def csrf_from(html: str) -> str:
    import re

    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "no CSRF token in page"
    return m.group(1)


def seed_history(store, tiles: dict, *, hours: int = 24, events: int = 30, seed: int = 0) -> None:
    """Statistics for the last `hours` (two cameras) and `events` alert events with real snapshots."""
    import random
    from datetime import UTC, datetime, timedelta

    from maskwatch.types import Attribute, Face, FrameResult

    rng = random.Random(seed)
    now = datetime.now(UTC)
    for h in range(hours, 0, -1):
        for cam in ("door", "lobby"):
            for m in (5, 25, 45):
                at = now - timedelta(hours=h, minutes=-m)
                faces = []
                for tid in range(rng.randint(1, 6)):
                    mask = rng.choices(["mask", "no_mask", "uncertain"], [0.7, 0.2, 0.1])[0]
                    gender = rng.choice(["man", "woman", "uncertain"])
                    faces.append(
                        Face(
                            (10.0 * tid, 0, 10.0 * tid + 8, 8),
                            0.9,
                            track_id=tid + 1,
                            mask=Attribute(mask, 0.9),
                            gender=Attribute(gender, 0.8),
                        )
                    )
                store.record_frame(cam, FrameResult(cam, 0, at.timestamp(), faces), at=at, flush=False)
    store.flush_stats(now=now)
    snap = jpeg(scene(tiles, faces=("unmasked",)))
    for i in range(events):
        store.add_event(
            camera=rng.choice(["door", "lobby"]),
            time=now - timedelta(minutes=30 + 47 * i),
            track_id=i + 1,
            mask=Attribute("no_mask", round(rng.uniform(0.8, 0.99), 3)),
            gender=Attribute(rng.choice(["man", "woman"]), 0.8),
            snapshot_jpeg=snap,
        )
