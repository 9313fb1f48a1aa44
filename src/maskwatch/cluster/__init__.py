"""Cameras across a Ray cluster (extra `cluster`; docs/cluster.md).

`ClusterMonitor` (head.py) is the monitor of `serve --ray` / `monitor --ray`: the web app, alerts and
mail stay on the head, each camera runs in a `CameraActor` (actor.py) on any node with capacity.
Importing this package does not import Ray; starting a `ClusterMonitor` does.
"""

from maskwatch.cluster.head import ClusterMonitor

__all__ = ["ClusterMonitor"]
