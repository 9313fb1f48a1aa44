"""The typed REST API (issue 13 item 6): every route's answer has a real schema in /api/openapi.json,
and apparent gender is left out of every answer (detect, events, stats, cameras) when it is turned off.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from maskwatch.store import Store
from maskwatch.types import Attribute, Face, FrameResult
from maskwatch.web import create_app
from web_helpers import PASSWORD, face_tiles, jpeg, scene, shared_yunet, web_settings

GENDER_KEYS = {"man", "woman", "gender", "gender_label", "gender_confidence", "gender_uncertain"}

EXPECTED = {
    ("get", "/api/health"): {"status", "version"},
    ("get", "/api/status"): {
        "status",
        "version",
        "models",
        "models_error",
        "cameras",
        "camera_states",
        "workers",
        "detect_interval",
        "alerts",
        "uptime_s",
    },
    ("post", "/api/detect"): {"source", "frame_index", "timestamp", "frame_size", "faces", "timings_ms"},
    ("get", "/api/events"): {"total", "offset", "limit", "events"},
    ("get", "/api/stats"): {"bucket", "buckets", "per_camera", "totals"},
    ("get", "/api/cameras"): {"cameras", "gender"},
}
NESTED = {  # component: properties it must have
    "Face": {"box", "score", "landmarks", "track_id", "mask", "gender"},
    "Attribute": {"label", "confidence"},
    "Event": {
        "id",
        "camera",
        "time",
        "track_id",
        "mask_label",
        "mask_confidence",
        "gender_label",
        "gender_confidence",
        "snapshot_url",
        "mail_status",
    },
    "Counts": {"people", "masked", "unmasked", "incorrect", "uncertain", "man", "woman", "compliance"},
    "Bucket": {"t", "people", "masked", "compliance"},
    "Camera": {
        "name",
        "source",
        "state",
        "error",
        "fps",
        "frames",
        "frames_read",
        "dropped",
        "reconnects",
        "counts",
        "last_frame_at",
        "last_frame_age_s",
        "latency_ms",
        "processing_ms",
        "detect_interval",
        "enabled",
        "quiet_hours",
    },
    "LiveCounts": {"people", "masked", "unmasked", "incorrect", "uncertain", "man", "woman"},
    "AlertHealth": {"store_ok", "last_error", "pending", "dropped", "events_stored"},
}


def _client(tmp_path, tiny_models, *, gender: bool):
    settings = web_settings(
        tmp_path,
        model_dir=tiny_models,
        yunet=shared_yunet(),
        privacy={"gender_enabled": gender},
    )
    store = Store.from_settings(settings)
    store.add_user("admin", PASSWORD)
    token = store.create_token("admin", "schemas")
    app = create_app(settings, store=store, start_background=False)
    return app, store, {"Authorization": f"Bearer {token}"}


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_route_has_a_response_schema(tmp_path, tiny_models):
    app, store, auth = _client(tmp_path, tiny_models, gender=True)
    with TestClient(app) as client:
        schema = client.get("/api/openapi.json", headers=auth).json()
    store.close()
    for (method, path), expected in EXPECTED.items():
        ok = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        body = _resolve(schema, ok)
        assert body.get("type") == "object" and expected <= set(body["properties"]), (path, body)
        assert set(body["required"]) & expected, path  # not an anything-goes object
    components = schema["components"]["schemas"]
    for name, expected in NESTED.items():
        assert expected <= set(components[name]["properties"]), name
    # gender fields are optional and say so; the error answers keep their ErrorBody
    for name, field in (("Face", "gender"), ("Event", "gender_label"), ("Counts", "man")):
        assert field not in components[name].get("required", []), (name, field)
        assert (
            "absent when privacy.gender_enabled is off"
            in components[name]["properties"][field]["description"]
        )
    assert (
        "ErrorBody"
        in schema["paths"]["/api/detect"]["post"]["responses"]["413"]["content"]["application/json"][
            "schema"
        ]["$ref"]
    )


def _keys(value: Any, out: set[str] | None = None) -> set[str]:
    """Every object key at any depth, except the keys of per_camera (camera names are data)."""
    out = set() if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            if k != "per_camera":
                out.add(k)
                _keys(v, out)
            else:
                for row in v.values():
                    _keys(row, out)
    elif isinstance(value, list):
        for v in value:
            _keys(v, out)
    return out


def _answers(tmp_path, tiny_models, monkeypatch, *, gender: bool) -> dict[str, Any]:
    app, store, auth = _client(tmp_path, tiny_models, gender=gender)
    store.add_event(
        camera="door",
        time=datetime.now(UTC),
        track_id=3,
        mask=Attribute("no_mask", 0.93),
        gender=Attribute("woman", 0.81),
        snapshot_jpeg=jpeg(np.full((60, 80, 3), 90, np.uint8)),
    )
    faces = [
        Face((0, 0, 50, 50), 0.9, track_id=1, mask=Attribute("mask", 0.9), gender=Attribute("man", 0.9)),
        Face(
            (60, 0, 110, 50), 0.9, track_id=2, mask=Attribute("no_mask", 0.9), gender=Attribute("woman", 0.9)
        ),
    ]
    store.record_frame("door", FrameResult("door", 0, time.time(), faces))
    with TestClient(app) as client:
        rt = app.state.runtime

        def describe():  # a running camera (CameraStream.snapshot), gender counted whatever the setting
            counts = {"people": 2, "masked": 1, "unmasked": 1, "incorrect": 0, "uncertain": 0}
            return [
                {
                    "name": "door",
                    "source": "rtsp://***@cam/1",
                    "state": "running",
                    "error": None,
                    "fps": 29.9,
                    "frames": 100,
                    "frames_read": 101,
                    "dropped": 1,
                    "reconnects": 0,
                    "counts": {**counts, "man": 1, "woman": 1, "gender_uncertain": 0},
                    "last_frame_at": time.time(),
                    "last_frame_age_s": 0.03,
                    "latency_ms": {"p50": 20.1, "p95": 30.2},
                    "processing_ms": 9.5,
                    "detect_interval": 2,
                    "enabled": True,
                    "quiet_hours": None,
                }
            ]

        monkeypatch.setattr(rt.cameras, "describe", describe)
        image = jpeg(scene(face_tiles()))
        answers = {
            "detect": client.post(
                "/api/detect", headers=auth, files={"file": ("s.jpg", image, "image/jpeg")}
            ),
            "events": client.get("/api/events", headers=auth),
            "stats": client.get("/api/stats?bucket=minute", headers=auth),
            "cameras": client.get("/api/cameras", headers=auth),
            "status": client.get("/api/status", headers=auth),
        }
    store.close()
    for name, r in answers.items():
        assert r.status_code == 200, (name, r.text)
    return {name: r.json() for name, r in answers.items()}


def test_gender_off_leaves_apparent_gender_out_of_every_answer(tmp_path, tiny_models, monkeypatch):
    answers = _answers(tmp_path, tiny_models, monkeypatch, gender=False)
    assert answers["detect"]["faces"], "the scene has faces"
    assert answers["events"]["events"] and answers["stats"]["totals"]["people"] == 2
    assert answers["cameras"]["cameras"][0]["counts"]["people"] == 2
    cameras = answers.pop("cameras")
    assert cameras.pop("gender") is False  # the one flag that says gender is off
    for name, body in [*answers.items(), ("cameras", cameras)]:
        assert not _keys(body) & GENDER_KEYS, (name, _keys(body) & GENDER_KEYS)


def test_gender_on_keeps_apparent_gender(tmp_path, tiny_models, monkeypatch):
    answers = _answers(tmp_path, tiny_models, monkeypatch, gender=True)
    assert all("gender" in face for face in answers["detect"]["faces"])
    event = answers["events"]["events"][0]
    assert (event["gender_label"], event["gender_confidence"]) == ("woman", 0.81)
    assert event["snapshot_url"].endswith("/snapshot.jpg") and "snapshot" not in event
    stats = answers["stats"]
    assert (stats["totals"]["man"], stats["totals"]["woman"]) == (1, 1)
    assert {"man", "woman"} <= set(stats["buckets"][0]) and {"man", "woman"} <= set(
        stats["per_camera"]["door"]
    )
    cameras = answers["cameras"]
    assert cameras["gender"] is True and cameras["cameras"][0]["counts"]["man"] == 1
    assert cameras["cameras"][0]["source"] == "rtsp://***@cam/1"
