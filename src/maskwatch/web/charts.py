"""Small server-rendered SVG charts (no JavaScript, no CDN). Colours come from CSS classes.

Example:
    >>> svg = line_chart([("09:00", 0.5), ("10:00", 1.0)], title="Compliance")
    >>> svg.startswith("<svg") and "polyline" in svg
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape

from markupsafe import Markup

W, H = 720, 240
NARROW_W = 360  # the phone-width variant (`width=NARROW_W`): fewer x labels, the same font size
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 24, 40


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def _num(v: float) -> str:
    return f"{v:.0f}"


def nice_max(value: float, ticks: int = 4) -> float:
    """The smallest axis maximum >= value whose tick step is 1, 2 or 5 times a power of ten.

    >>> nice_max(2), nice_max(7), nice_max(130)
    (4.0, 8.0, 200.0)
    """
    step = max(value / ticks, 1.0)  # counts: whole-number ticks
    mag = 10 ** math.floor(math.log10(step))
    for m in (1, 2, 5, 10):
        if m * mag >= step:
            return float(m * mag * ticks)
    return float(10 * mag * ticks)


def _frame(title: str, y_max: float, y_fmt, width: int) -> list[str]:
    size = "wide" if width > NARROW_W else "narrow"
    parts = [
        f'<svg class="chart chart-{size}" viewBox="0 0 {width} {H}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        v = y_max * i / 4
        y = PAD_T + (H - PAD_T - PAD_B) * (1 - i / 4)
        parts.append(f'<line class="grid" x1="{PAD_L}" y1="{y:.1f}" x2="{width - PAD_R}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{y_fmt(v)}</text>'
        )
    return parts


def _x_labels(labels: Sequence[str], xs: Sequence[float], width: int) -> list[str]:
    step = max(1, -(-len(labels) // max(2, width // 90)))  # a label every 90 px at most
    return [
        f'<text class="axis" x="{x:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{escape(lab)}</text>'
        for i, (lab, x) in enumerate(zip(labels, xs, strict=True))
        if i % step == 0
    ]


def line_chart(
    points: Sequence[tuple[str, float | None]],
    *,
    title: str,
    y_max: float = 1.0,
    percent: bool = True,
    width: int = W,
) -> Markup:
    """A line over time; None values leave gaps."""
    y_fmt = _pct if percent else _num
    parts = _frame(title, y_max, y_fmt, width)
    n = len(points)
    if n == 0:
        parts.append(
            f'<text class="empty" x="{width / 2}" y="{H / 2}" text-anchor="middle">no data yet</text></svg>'
        )
        return Markup("".join(parts))
    inner_w = width - PAD_L - PAD_R
    xs = [PAD_L + inner_w * (i + 0.5) / n for i in range(n)]
    segments: list[list[str]] = [[]]
    for (label, v), x in zip(points, xs, strict=True):
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        y = PAD_T + (H - PAD_T - PAD_B) * (1 - min(max(v / y_max, 0), 1))
        segments[-1].append(f"{x:.1f},{y:.1f}")
        parts.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3">'
            f"<title>{escape(label)}: {y_fmt(v)}</title></circle>"
        )
    for seg in segments:
        if len(seg) > 1:
            parts.append(f'<polyline class="line" points="{" ".join(seg)}"/>')
    parts += _x_labels([p[0] for p in points], xs, width)
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    groups: Sequence[tuple[str, Sequence[tuple[str, float]]]],
    *,
    title: str,
    percent: bool = False,
    width: int = W,
) -> Markup:
    """Grouped bars: groups = [(group label, [(series name, value), ...]), ...]. Series name = CSS class."""
    values = [v for _, series in groups for _, v in series]
    y_max = 1.0 if percent else nice_max(max([0.0, *values]))
    y_fmt = _pct if percent else _num
    parts = _frame(title, y_max, y_fmt, width)
    if not groups:
        parts.append(
            f'<text class="empty" x="{width / 2}" y="{H / 2}" text-anchor="middle">no data yet</text></svg>'
        )
        return Markup("".join(parts))
    inner_w = width - PAD_L - PAD_R
    inner_h = H - PAD_T - PAD_B
    gw = inner_w / len(groups)
    xs = []
    for gi, (label, series) in enumerate(groups):
        k = max(1, len(series))
        bw = min(40.0, gw * 0.8 / k)
        x0 = PAD_L + gw * gi + (gw - bw * k) / 2
        xs.append(PAD_L + gw * (gi + 0.5))
        for si, (name, v) in enumerate(series):
            h = inner_h * min(max(v / y_max, 0), 1)
            x = x0 + si * bw
            parts.append(
                f'<rect class="bar {escape(name)}" x="{x:.1f}" y="{PAD_T + inner_h - h:.1f}" '
                f'width="{bw - 2:.1f}" '
                f'height="{h:.1f}"><title>{escape(label)} {escape(name)}: {y_fmt(v)}</title></rect>'
            )
    parts += _x_labels([g[0] for g in groups], xs, width)
    parts.append("</svg>")
    return Markup("".join(parts))


_STEPS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


def _floor(t: datetime, bucket: str) -> datetime:
    t = t.replace(second=0, microsecond=0)
    if bucket in ("hour", "day"):
        t = t.replace(minute=0)
    if bucket == "day":
        t = t.replace(hour=0)
    return t


def time_axis(
    buckets: Sequence[dict], start: datetime, end: datetime, bucket: str
) -> list[tuple[datetime, dict | None]]:
    """(bucket start, the store's bucket dict or None where nothing was seen), from `start` to `end`.

    >>> from datetime import UTC
    >>> t0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    >>> axis = time_axis([{"t": t0.isoformat(), "people": 1}], t0, t0 + timedelta(minutes=2), "minute")
    >>> [None if b is None else b["people"] for _, b in axis]
    [1, None, None]
    """
    by_time: dict[datetime, dict] = {}
    for b in buckets:
        try:
            by_time[datetime.fromisoformat(b["t"])] = b
        except (KeyError, TypeError, ValueError):
            continue
    out: list[tuple[datetime, dict | None]] = []
    t, step = _floor(start, bucket), _STEPS[bucket]
    while t <= end and len(out) < 2000:
        out.append((t, by_time.get(t)))
        t += step
    return out
