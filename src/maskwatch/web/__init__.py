"""The maskwatch web application (FastAPI): live view, uploads, events, statistics, settings, REST API."""

from maskwatch.web.app import create_app

__all__ = ["create_app"]
