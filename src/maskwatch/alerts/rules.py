"""When a person becomes an alert. Pure logic on frame results: no I/O, no clock of its own.

A tracked person becomes one alert when their (voted) mask label is `no_mask` or `incorrect` (a mask
worn with nose or mouth uncovered) with confidence >= `min_confidence` for at least `min_frames` frames
AND `min_seconds` seconds. Both labels count towards the same run, so a person flipping between them is
one alert, not two; the alert carries the label seen most in the run (`no_mask` on a tie). A `mask` frame
starts the count again; so does an `incorrect` one when `incorrect_mask_alerts` is off (a mask worn
badly is then taken as worn). `uncertain` (or low-confidence) frames neither count nor reset, and never
alert. Faces without a track id never alert (a person cannot be followed across frames without one).

Cooldown: a person alerts at most once per `cooldown_s`: the same track alerts again only after the
cooldown (if still unmasked), and a *new* track that starts within `reentry_radius` face widths of where
an alerted person was seen on the same camera (anywhere along their path: where they came in, walked
and left), within the cooldown, is taken as that person coming back (tracks get new ids when someone
leaves and re-enters, when a looping video file starts again, when a track is lost and found again
mid-walk, or when a stream's pipeline is rebuilt). Without face recognition this is an approximation: two
different people passing the same spot within the cooldown give one alert.

Times are the frames' own timestamps (video time for files, wall time for live sources), per camera.
Quiet hours, digests and the hourly email cap are applied by the engine, not here.

Example:
    >>> from maskwatch.config import AlertSettings
    >>> from maskwatch.types import Attribute, Face
    >>> rules = AlertRules(AlertSettings(min_frames=3, min_seconds=0.2))
    >>> face = Face(box=(0, 0, 50, 50), score=0.9, track_id=1, mask=Attribute("no_mask", 0.95))
    >>> [len(rules.update("door", t / 10, [face])) for t in range(5)]
    [0, 0, 1, 0, 0]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from maskwatch.config import AlertSettings
from maskwatch.types import Attribute, Face

# A track not seen for this long is forgotten (its alert, if any, is kept for re-entry matching).
TRACK_TIMEOUT_S = 5.0
EPS = 1e-6  # frame times are floats: 6.3 - 5.3 < 1.0
ALERT_LABELS = ("no_mask", "incorrect")  # the mask labels that count towards an alert, in tie order


@dataclass
class _Track:
    first_seen: float
    last_seen: float
    box: tuple[float, float, float, float]
    path: list[tuple[float, float, float, float]]  # where it was seen: a box every half face width
    run_start: float | None = None  # time of the first no_mask / incorrect frame of the current run
    run_frames: int = 0
    run_labels: Counter = field(default_factory=Counter)  # frames per label in the current run
    run_conf: dict[str, float] = field(default_factory=dict)  # latest confidence per label in the run
    last_alert: float | None = None  # when this person (track or the one it continues) last alerted


@dataclass
class _Left:
    """An alerted person whose track ended: kept for re-entry matching until the cooldown ends. `boxes`:
    where they were first and last seen (someone coming back, or a video file playing again, starts
    where they left or where they came in)."""

    boxes: tuple[tuple[float, float, float, float], ...]
    last_seen: float
    last_alert: float


@dataclass
class _Camera:
    tracks: dict[int, _Track] = field(default_factory=dict)
    left: list[_Left] = field(default_factory=list)
    last_t: float | None = None


PATH_POINTS = 24  # boxes kept per track for re-entry matching (the oldest of the middle ones go first)


def _extend_path(
    path: list[tuple[float, float, float, float]], box: tuple[float, float, float, float]
) -> None:
    """Keep `box` in the track's path when its centre is half a face width from the last one kept."""
    lx, ly = (path[-1][0] + path[-1][2]) / 2, (path[-1][1] + path[-1][3]) / 2
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    if ((cx - lx) ** 2 + (cy - ly) ** 2) ** 0.5 >= 0.5 * (box[2] - box[0]):
        path.append(box)
        if len(path) > PATH_POINTS:
            del path[1]  # keep where it came in


class AlertRules:
    """Feeds on (camera, time, faces); returns the faces that become alerts now."""

    def __init__(self, settings: AlertSettings):
        self.settings = settings
        self._cams: dict[str, _Camera] = {}

    def update_settings(self, settings: AlertSettings) -> None:
        self.settings = settings

    def reset(self, camera: str | None = None) -> None:
        if camera is None:
            self._cams.clear()
        else:
            self._cams.pop(camera, None)

    def update(self, camera: str, t: float, faces: tuple[Face, ...] | list[Face]) -> list[Face]:
        s = self.settings
        cam = self._cams.get(camera)
        if cam is None:
            cam = self._cams[camera] = _Camera()
        elif cam.last_t is not None and t < cam.last_t - 1.0:
            cam.tracks.clear()  # time went backwards (a file restarted): start over for this camera
            cam.left.clear()
        cam.last_t = t
        alerts: list[Face] = []
        seen = {f.track_id for f in faces if f.track_id is not None}
        for face in faces:
            if face.track_id is None:
                continue
            tr = cam.tracks.get(face.track_id)
            if tr is None:
                back = self._reentry(cam, face.box, t, seen)
                # a person coming back keeps their path: the next track (a swap, a loop) matches it too
                path = [*back.boxes[-PATH_POINTS:], face.box] if back else [face.box]
                tr = cam.tracks[face.track_id] = _Track(first_seen=t, last_seen=t, box=face.box, path=path)
                tr.last_alert = back.last_alert if back else None
            tr.last_seen, tr.box = t, face.box
            _extend_path(tr.path, face.box)
            label = face.mask.label
            if label == "mask" or (label == "incorrect" and not s.incorrect_mask_alerts):
                tr.run_start, tr.run_frames = None, 0
                tr.run_labels.clear()
                continue
            if label not in ALERT_LABELS or face.mask.confidence < s.min_confidence:
                continue  # uncertain: neither counts nor resets
            if tr.run_start is None:
                tr.run_start = t
            tr.run_frames += 1
            tr.run_labels[label] += 1
            tr.run_conf[label] = face.mask.confidence
            qualified = tr.run_frames >= s.min_frames and t - tr.run_start >= s.min_seconds - EPS
            cooled = tr.last_alert is None or t - tr.last_alert >= s.cooldown_s - EPS
            if qualified and cooled:
                tr.last_alert = t
                alerts.append(self._alert_face(tr, face))
        self._expire(cam, t, seen)
        return alerts

    @staticmethod
    def _alert_face(tr: _Track, face: Face) -> Face:
        """`face` labelled with its run's most seen alert label (`no_mask` wins a tie)."""
        label = max(ALERT_LABELS, key=lambda lab: tr.run_labels[lab])  # ALERT_LABELS starts with no_mask
        if label == face.mask.label:
            return face
        return face.with_(mask=Attribute(label, tr.run_conf[label]))

    def _reentry(self, cam: _Camera, box, t: float, seen: set[int]) -> _Left | None:
        """The alerted person who left near `box` within the cooldown, if any (that person is then
        forgotten, so one departure matches one re-entry)."""
        s = self.settings
        if s.reentry_radius <= 0:
            return None
        for tid in [i for i, tr in cam.tracks.items() if i not in seen and tr.last_alert is not None]:
            tr = cam.tracks.pop(tid)  # an alerted track missing from this frame counts as having left
            if tr.last_alert is not None:
                cam.left.append(_Left((*tr.path, tr.box), tr.last_seen, tr.last_alert))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        best, best_d = None, None
        for left in cam.left:
            if t - left.last_alert >= s.cooldown_s:
                continue
            for lb in left.boxes:
                lx, ly = (lb[0] + lb[2]) / 2, (lb[1] + lb[3]) / 2
                width = max(box[2] - box[0], lb[2] - lb[0])
                d = ((cx - lx) ** 2 + (cy - ly) ** 2) ** 0.5
                if d <= s.reentry_radius * width and (best_d is None or d < best_d):
                    best, best_d = left, d
        if best is None:
            return None
        cam.left.remove(best)
        return best

    def _expire(self, cam: _Camera, t: float, seen: set[int]) -> None:
        cooldown = self.settings.cooldown_s
        for tid in [
            tid for tid, tr in cam.tracks.items() if tid not in seen and t - tr.last_seen > TRACK_TIMEOUT_S
        ]:
            tr = cam.tracks.pop(tid)
            if tr.last_alert is not None and t - tr.last_alert < cooldown:
                cam.left.append(_Left((*tr.path, tr.box), tr.last_seen, tr.last_alert))
        if cam.left:
            cam.left = [lf for lf in cam.left if t - lf.last_alert < cooldown]

    @property
    def active_tracks(self) -> int:
        return sum(len(c.tracks) for c in self._cams.values())
