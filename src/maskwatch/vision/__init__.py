"""Vision: face detection, tracking, attribute classification and drawing.

Modules: `detect` (YuNet / res10 backends), `classify` (ONNX attribute models described by model cards),
`track` (IoU tracker + label voting), `pipeline` (detect -> track -> classify -> vote), `draw`
(annotation, snapshots), `geometry` (box helpers), `cli` (`maskwatch detect`, `maskwatch bench`).

The main names are importable from here (loaded lazily, so importing the package is cheap):

    >>> from maskwatch.vision import Pipeline, create_detector, AttributeClassifier  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FaceDetector": "detect",
    "create_detector": "detect",
    "ensure_yunet": "detect",
    "DetectorError": "detect",
    "YuNetDetector": "detect",
    "Res10Detector": "detect",
    "AttributeClassifier": "classify",
    "ModelNotFoundError": "classify",
    "ModelCardError": "classify",
    "IouTracker": "track",
    "Vote": "track",
    "Pipeline": "pipeline",
    "annotate": "draw",
    "crop_face": "draw",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
