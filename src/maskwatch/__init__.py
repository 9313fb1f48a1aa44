"""maskwatch: live face mask and apparent-gender monitoring."""

from maskwatch.types import Attribute, Face, FrameResult

__all__ = ["Attribute", "Face", "FrameResult"]
__version__ = "0.1.0"
