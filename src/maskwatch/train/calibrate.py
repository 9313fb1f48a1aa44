"""`maskwatch evaluate calibrate`: the `uncertain` threshold of a head from cross-dataset predictions.

Reads per-face dumps of `evaluate crops|faces|scenes --dump` (one JSON line per face with `truth`,
`probs` {label: probability} and `set`), made with sets the model never trained on. A face is answered
when its top probability reaches the threshold, else it is `uncertain`.

The threshold is the lowest one at which the answered faces of every set are right at least `target` of
the time (the worst set decides: faces in the wild resemble the hardest development set more than the
average), unless that leaves more than `max_uncertain` of some set's faces unanswered; then it is the
highest one that leaves no set more than that share. Figures are leave-one-set-out: each set is scored
with the threshold chosen on the other sets, so no reported figure comes from a threshold tuned on the
faces it scores. The shipped threshold is chosen on all sets together; the card gets it and the
coverage/accuracy curve.

Example:
    >>> conf = np.array([0.99, 0.9, 0.6, 0.95]); ok = np.array([True, True, False, True])
    >>> coverage_accuracy(conf, ok, 0.8)
    (0.75, 1.0)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

GRID = np.round(np.arange(0.50, 0.995, 0.005), 3)


@dataclass
class Scored:
    """One set's faces: top probability and whether the top label is right."""

    name: str
    confidence: np.ndarray
    correct: np.ndarray
    truth: np.ndarray | None = None  # labels, for per-class recall

    def recalls(self) -> dict[str, float]:
        if self.truth is None:
            return {}
        return {str(c): round(float(self.correct[self.truth == c].mean()), 4) for c in np.unique(self.truth)}


def read_dumps(paths: Sequence[str | Path], task: str) -> list[Scored]:
    """Faces of the dumps grouped by set. A two-label mask model's dump scores `incorrect` truth as
    `no_mask` (how such models learnt it); faces without a detection (no probabilities) are skipped."""
    by_set: dict[str, tuple[list[float], list[bool], list[str]]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            probs = row.get("probs") or {}
            if not probs:
                continue
            truth = row["truth"]
            if truth not in probs and task == "mask" and truth == "incorrect":
                truth = "no_mask"
            top = max(probs, key=probs.get)
            conf, ok, truths = by_set.setdefault(str(row.get("set") or Path(path).stem), ([], [], []))
            conf.append(float(probs[top]))
            ok.append(top == truth)
            truths.append(truth)
    if not by_set:
        raise click.UsageError("no faces with probabilities in the dumps")
    return [
        Scored(k, np.asarray(c), np.asarray(o, bool), np.asarray(t))
        for k, (c, o, t) in sorted(by_set.items())
    ]


def coverage_accuracy(
    confidence: np.ndarray, correct: np.ndarray, threshold: float
) -> tuple[float, float | None]:
    """(share of faces answered, accuracy on them) at `threshold`."""
    answered = confidence >= threshold
    cov = float(answered.mean()) if len(answered) else 0.0
    return round(cov, 4), (round(float(correct[answered].mean()), 4) if answered.any() else None)


def curve(sets: Sequence[Scored]) -> list[dict]:
    """Coverage and accuracy when answering at every threshold of GRID: averaged over the sets, and the
    worst set's (`min_coverage`, `min_accuracy`)."""
    rows = []
    for t in GRID:
        pairs = [coverage_accuracy(s.confidence, s.correct, float(t)) for s in sets]
        accs = [a for _, a in pairs if a is not None]
        rows.append(
            {
                "threshold": float(t),
                "coverage": round(float(np.mean([c for c, _ in pairs])), 4),
                "accuracy": round(float(np.mean(accs)), 4) if accs else None,
                "min_coverage": min(c for c, _ in pairs),
                "min_accuracy": min(accs) if accs else None,
            }
        )
    return rows


def choose(sets: Sequence[Scored], target: float, max_uncertain: float) -> dict:
    """The threshold for these sets (see the module docstring) and why it was chosen."""
    rows = curve(sets)
    meets = [r for r in rows if r["min_accuracy"] is not None and r["min_accuracy"] >= target]
    allowed = [r for r in rows if r["min_coverage"] >= 1 - max_uncertain]
    if meets and meets[0]["min_coverage"] >= 1 - max_uncertain:
        pick, reason = meets[0], "lowest threshold meeting the accuracy target"
    elif allowed:
        pick = allowed[-1]
        reason = "accuracy target not reachable within the uncertain limit: the uncertain limit holds"
    else:
        pick, reason = rows[0], "even the lowest threshold leaves more than the uncertain limit"
    return {
        "threshold": pick["threshold"],
        "coverage": pick["coverage"],
        "accuracy": pick["accuracy"],
        "rule": reason,
    }


def calibrate(sets: Sequence[Scored], target: float, max_uncertain: float) -> dict:
    """Shipped threshold (all sets), leave-one-set-out figures, and the pooled curve."""
    shipped = choose(sets, target, max_uncertain)
    per_set = {}
    for i, s in enumerate(sets):
        others = [o for j, o in enumerate(sets) if j != i]
        t = choose(others, target, max_uncertain)["threshold"] if others else shipped["threshold"]
        cov, acc = coverage_accuracy(s.confidence, s.correct, t)
        per_set[s.name] = {
            "n": int(len(s.correct)),
            "accuracy_argmax": round(float(s.correct.mean()), 4),
            "recall_argmax": s.recalls(),
            "balanced_accuracy_argmax": round(float(np.mean(list(s.recalls().values()))), 4)
            if s.recalls()
            else None,
            "threshold_from_other_sets": t,
            "uncertain_share": round(1 - cov, 4),
            "accuracy_when_answering": acc,
            "meets_targets": bool(acc is not None and acc >= target and 1 - cov <= max_uncertain + 1e-9),
        }
    return {
        "target_accuracy_when_answering": target,
        "max_uncertain_share": max_uncertain,
        "sets": [s.name for s in sets],
        "shipped": shipped,
        "leave_one_set_out": per_set,
        "curve": [r for r in curve(sets) if abs(r["threshold"] * 20 - round(r["threshold"] * 20)) < 1e-6],
    }


@click.command("calibrate")
@click.argument("dumps", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--task", type=click.Choice(["mask", "gender"]), required=True)
@click.option("--target", type=float, default=0.97, show_default=True, help="Accuracy when answering.")
@click.option("--max-uncertain", type=float, default=0.15, show_default=True, help="Largest uncertain share.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--update-card",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Write the threshold into this card's outputs and the figures under metrics.calibration_TASK.",
)
def calibrate_cmd(dumps, task, target, max_uncertain, json_out, update_card):
    """Choose a head's `uncertain` threshold from DUMPS of `evaluate ... --dump` on held-out sets."""
    if not (0.5 <= target <= 1 and 0 <= max_uncertain <= 1):
        raise click.BadParameter("need 0.5 <= --target <= 1 and 0 <= --max-uncertain <= 1")
    result = {
        "task": task,
        "dumps": [str(d) for d in dumps],
        **calibrate(read_dumps(dumps, task), target, max_uncertain),
    }
    text = json.dumps(result, indent=1)
    if json_out:
        Path(json_out).write_text(text)
    if update_card:
        card_path = Path(update_card)
        card = json.loads(card_path.read_text())
        if task not in card.get("outputs", {}):
            raise click.UsageError(f"{card_path} has no {task} output")
        card["outputs"][task]["uncertain_threshold"] = result["shipped"]["threshold"]
        card.setdefault("metrics", {})[f"calibration_{task}"] = result
        by_source = {
            k: {x: v[x] for x in ("n", "accuracy_argmax", "balanced_accuracy_argmax", "recall_argmax")}
            for k, v in result["leave_one_set_out"].items()
        }
        card.setdefault("fairness", {}).setdefault(task, {})["by_source"] = by_source
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    click.echo(text)
