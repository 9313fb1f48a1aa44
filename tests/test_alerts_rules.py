"""Alert rules (pure logic) and the alert-related settings validation."""

from __future__ import annotations

from datetime import time

import pytest
from pydantic import ValidationError

from maskwatch.alerts.engine import in_quiet_hours, parse_quiet_hours
from maskwatch.alerts.rules import AlertRules
from maskwatch.config import AlertSettings, CameraSettings, Settings, SmtpSettings
from maskwatch.types import Attribute, Face


def f(tid, label="no_mask", conf=0.95, x=100):
    return Face(box=(x, 100, x + 50, 160), score=0.9, track_id=tid, mask=Attribute(label, conf))


def run(rules, frames, fps=10.0, cam="door", t0=0.0):
    """frames: list of face lists; returns [(frame_index, track_id)] of alerts."""
    out = []
    for i, faces in enumerate(frames):
        out += [(i, a.track_id) for a in rules.update(cam, t0 + i / fps, faces)]
    return out


def settings(**kw):
    base = {"min_frames": 5, "min_seconds": 1.0, "min_confidence": 0.8, "cooldown_s": 60}
    return AlertSettings(**{**base, **kw})


def test_needs_min_frames_and_min_seconds():
    rules = AlertRules(settings())
    assert run(rules, [[f(1)]] * 30) == [(10, 1)]  # 1.0 s at 10 fps = frame 10 (frames >= 5 by then)
    rules = AlertRules(settings(min_frames=20, min_seconds=0.1))
    assert run(rules, [[f(1)]] * 30) == [(19, 1)]


def test_uncertain_and_low_confidence_never_alert_and_mask_resets():
    rules = AlertRules(settings())
    assert run(rules, [[f(1, "uncertain")]] * 50 + [[f(2, conf=0.7)]] * 50) == []
    # 8 no_mask frames, a mask frame, then no_mask again: the run restarts at frame 9
    frames = [[f(1)]] * 8 + [[f(1, "mask")]] + [[f(1)]] * 15
    assert run(AlertRules(settings()), frames) == [(19, 1)]
    # uncertain frames in between neither count nor reset
    frames = [[f(1)]] * 3 + [[f(1, "uncertain")]] * 10 + [[f(1)]] * 5
    assert run(AlertRules(settings()), frames) == [(14, 1)]


def test_untracked_faces_never_alert():
    rules = AlertRules(settings())
    face = Face(box=(0, 0, 50, 50), score=0.9, mask=Attribute("no_mask", 0.99))
    assert run(rules, [[face]] * 50) == []


def test_same_track_alerts_once_per_cooldown():
    rules = AlertRules(settings(cooldown_s=5))
    assert run(rules, [[f(1)]] * 120) == [(10, 1), (60, 1), (110, 1)]


def test_reentry_near_the_same_place_within_cooldown_is_the_same_person():
    rules = AlertRules(settings())
    frames = [[f(1)]] * 20 + [[]] * 100 + [[f(2, x=120)]] * 30  # leaves 10 s, comes back as track 2
    assert run(rules, frames) == [(10, 1)]
    # a different person elsewhere in the frame still alerts
    rules = AlertRules(settings())
    assert run(rules, [[f(1)]] * 20 + [[f(1), f(3, x=600)]] * 20) == [(10, 1), (30, 3)]
    # after the cooldown the returning person alerts again
    rules = AlertRules(settings(cooldown_s=5))
    assert run(rules, [[f(1)]] * 20 + [[]] * 100 + [[f(2, x=120)]] * 30) == [(10, 1), (130, 2)]
    # re-entry matching off
    rules = AlertRules(settings(reentry_radius=0))
    assert run(rules, [[f(1)]] * 20 + [[]] * 10 + [[f(2)]] * 30) == [(10, 1), (40, 2)]


def test_a_looping_walk_is_one_person_per_cooldown():
    """A file that loops: the person walks from x=0 to x=300, then the video starts again and a new track
    appears where the walk began (far from where it ended): still the same person within the cooldown."""
    rules = AlertRules(settings(cooldown_s=60))
    frames, tid = [], 1
    for _loop in range(5):  # 5 loops of 3 s, each one new track id
        frames += [[f(tid, x=x)] for x in range(0, 300, 10)]
        tid += 1
    assert [a for _, a in run(rules, frames)] == [1]
    rules = AlertRules(settings(cooldown_s=6))
    assert len(run(rules, frames)) == 3  # 15 s with a 6 s cooldown: alerts at about 1, 7 and 13 s


def test_a_track_lost_and_found_mid_walk_is_the_same_person():
    rules = AlertRules(settings(cooldown_s=60))
    walk = [[f(1, x=x)] for x in range(0, 300, 10)]  # alerts on the way
    gap = [[]] * 3  # the tracker loses the face for a moment
    found = [[f(2, x=x)] for x in range(150, 300, 10)]  # found again half way, with a new id
    assert [a for _, a in run(rules, walk + gap + found)] == [1]


def test_reentry_with_a_quick_id_switch():
    rules = AlertRules(settings())  # the tracker loses the person for one frame and gives a new id
    assert run(rules, [[f(1)]] * 20 + [[f(2, x=105)]] * 40) == [(10, 1)]


def labels(rules, frames, fps=10.0, cam="door"):
    """Like `run`, with the alert's mask label: [(frame_index, track_id, label)]."""
    return [
        (i, a.track_id, a.mask.label)
        for i, faces in enumerate(frames)
        for a in rules.update(cam, i / fps, faces)
    ]


def test_a_person_coming_back_keeps_their_path_for_the_next_track():
    """Seen on a cluster under load: a walk (track 1, alerted), an id swap to 2 near the end, 1 found again
    there, then the walk starts over from the left as track 3. Each new track continues the same person,
    and the last one matches where the first came in, which only the inherited path remembers."""
    rules = AlertRules(settings(min_frames=3, min_seconds=0.0))
    walk = [[f(1, x=x)] for x in range(0, 400, 20)]  # alerts early on
    swap = [[f(2, x=420)], [f(2, x=440)], [f(1, x=460)], [f(1, x=480)]]
    again = [[f(3, x=x)] for x in range(0, 200, 20)]
    assert run(rules, walk + swap + again) == [(2, 1)]


def test_incorrect_mask_alerts_like_no_mask():
    assert labels(AlertRules(settings()), [[f(1, "incorrect")]] * 30) == [(10, 1, "incorrect")]
    assert labels(AlertRules(settings()), [[f(1, "incorrect", conf=0.7)]] * 30) == []  # low confidence
    # masks worn incorrectly are one more reason to alert: they do not hide someone without a mask
    frames = [[f(1, "incorrect"), f(2, x=600)]] * 30
    assert labels(AlertRules(settings()), frames) == [(10, 1, "incorrect"), (10, 2, "no_mask")]


def test_flipping_between_no_mask_and_incorrect_is_one_run_and_one_alert():
    # the label flips every frame: the run is not reset, and the person alerts once
    frames = [[f(1, "no_mask" if i % 2 else "incorrect")] for i in range(100)]
    assert run(AlertRules(settings()), frames) == [(10, 1)]
    # the alert carries the label seen most in the run, with that label's latest confidence
    frames = [[f(1, "incorrect", conf=0.9)]] * 8 + [[f(1, "no_mask")]] * 3
    rules = AlertRules(settings())
    out = [a for i, faces in enumerate(frames) for a in rules.update("door", i / 10, faces)]
    assert [(a.mask.label, a.mask.confidence) for a in out] == [("incorrect", 0.9)]
    frames = [[f(1, "no_mask")]] * 5 + [[f(1, "incorrect")]] * 6  # 5 : 6 at the alert (frame 10)
    assert labels(AlertRules(settings()), frames) == [(10, 1, "incorrect")]
    frames = [[f(1, "incorrect")]] * 5 + [[f(1, "no_mask")]] * 10  # 5 : 6
    assert labels(AlertRules(settings()), frames) == [(10, 1, "no_mask")]
    # the cooldown holds across labels: no second alert when the same person changes label
    frames = [[f(1, "no_mask")]] * 20 + [[f(1, "mask")]] * 5 + [[f(1, "incorrect")]] * 30
    assert run(AlertRules(settings()), frames) == [(10, 1)]
    # and so does re-entry: a person who left unmasked comes back with the mask under the nose
    frames = [[f(1)]] * 20 + [[]] * 30 + [[f(2, "incorrect", x=110)]] * 30
    assert run(AlertRules(settings()), frames) == [(10, 1)]


def test_incorrect_mask_alerts_off():
    rules = AlertRules(settings(incorrect_mask_alerts=False))
    assert run(rules, [[f(1, "incorrect")]] * 50) == []
    # no_mask still alerts; an incorrect frame counts as a mask worn, so it starts the run again
    rules = AlertRules(settings(incorrect_mask_alerts=False))
    frames = [[f(2)]] * 8 + [[f(2, "incorrect")]] + [[f(2)]] * 15
    assert labels(rules, frames) == [(19, 2, "no_mask")]
    # switched on again at run time (the settings page)
    rules.update_settings(settings())
    assert labels(rules, [[f(3, "incorrect", x=600)]] * 11, cam="hall") == [(10, 3, "incorrect")]
    assert AlertSettings().incorrect_mask_alerts is True


def test_cameras_are_independent_and_time_going_back_resets():
    rules = AlertRules(settings())
    assert run(rules, [[f(1)]] * 20, cam="a") == [(10, 1)]
    assert run(rules, [[f(1)]] * 20, cam="b") == [(10, 1)]
    assert run(rules, [[f(1)]] * 20, cam="a", t0=0.0) == [(10, 1)]  # the file restarted


def test_quiet_hours():
    w = parse_quiet_hours("22:00-06:00, 12:00-12:30")
    assert (
        in_quiet_hours(w, time(23, 0)) and in_quiet_hours(w, time(5, 59)) and in_quiet_hours(w, time(12, 10))
    )
    assert not in_quiet_hours(w, time(6, 0)) and not in_quiet_hours(w, time(12, 30))
    with pytest.raises(ValueError):
        parse_quiet_hours("22-6")
    with pytest.raises(ValidationError, match="quiet hours"):
        CameraSettings(name="a", source="0", quiet_hours="25:00-06:00")


@pytest.mark.parametrize(
    "bad",
    [
        "admin",
        "admin@",
        "@example.org",
        "a b@example.org",
        "a@b.org, c@d.org",
        "Admin <admin@example.org",
        "admin@exa mple.org",
    ],
)
def test_malformed_recipient_rejected_at_config_time(bad):
    with pytest.raises(ValidationError, match="not a valid email address"):
        SmtpSettings(recipients=[bad])
    with pytest.raises(ValidationError):
        Settings(smtp={"recipients": ["ok@example.org", bad]})


def test_good_recipients_and_env(monkeypatch):
    s = SmtpSettings(recipients=["admin@example.org", "Security Desk <desk@mail.example.org>"])
    assert len(s.recipients) == 2
    monkeypatch.setenv("MASKWATCH_SMTP__RECIPIENTS", '["ops@example.org"]')
    assert Settings().smtp.recipients == ["ops@example.org"]
    monkeypatch.setenv("MASKWATCH_SMTP__RECIPIENTS", '["not an address"]')
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(ValidationError):
        SmtpSettings(sender="maskwatch")
