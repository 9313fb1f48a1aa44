"""Plots like the original report: loss and accuracy curves (train vs. validation) and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: dict, path: str | Path) -> Path:
    """One row per head: loss (left) and accuracy (right), train vs. validation, by epoch."""
    plt = _plt()
    epochs = history["epochs"]
    heads = list(epochs[0]["train"].keys()) if epochs else []
    fig, axes = plt.subplots(max(1, len(heads)), 2, figsize=(10, 3.6 * max(1, len(heads))), squeeze=False)
    x = [e["epoch"] for e in epochs]
    for r, h in enumerate(heads):
        for c, key in enumerate(("loss", "accuracy")):
            ax = axes[r][c]
            ax.plot(x, [e["train"][h][key] for e in epochs], "o-", label=f"train {key}")
            ax.plot(x, [e["val"].get(h, {}).get(key, np.nan) for e in epochs], "s-", label=f"val {key}")
            if history.get("best_epoch"):
                ax.axvline(history["best_epoch"], color="gray", ls=":", lw=1, label="best epoch")
            ax.set_title(f"{h}: {key}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[int(t), int(p)] += 1
    return cm


def plot_confusion(cm: np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.2 + 0.6 * len(labels), 3 + 0.5 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
