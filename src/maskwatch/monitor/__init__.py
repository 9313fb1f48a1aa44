"""The monitoring engine: every stream's loop, independent of the web app.

    monitor = Monitor(effective_settings(settings, store), store)
    monitor.start()          # readers, worker pool, alert engine, mail worker
    monitor.describe()       # every camera's health
    monitor.stop()

`maskwatch serve` embeds one; `maskwatch monitor --config FILE` runs one headless.
"""

from maskwatch.monitor.engine import Monitor, effective_settings
from maskwatch.monitor.models import Models, ModelsUnavailable
from maskwatch.monitor.session import StreamSession
from maskwatch.monitor.stream import CameraStream

__all__ = ["CameraStream", "Models", "ModelsUnavailable", "Monitor", "StreamSession", "effective_settings"]
