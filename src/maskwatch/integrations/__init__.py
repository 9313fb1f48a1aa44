"""Integrations with the systems a site already runs (MQTT; see docs/integrations.md).

Each one is imported only when configured, so its optional dependency is needed only then.
"""
