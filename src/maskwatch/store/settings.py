"""The settings section of the store: the overrides edited in the app (one JSON document)."""

from __future__ import annotations

import json

from maskwatch.store.base import StoreBase
from maskwatch.store.rows import SettingRow


class SettingsSection(StoreBase):
    def get_setting_overrides(self) -> dict:
        row = self._run("reading settings", lambda s: s.get(SettingRow, "overrides"))
        return dict(row.value) if row else {}

    def set_setting_overrides(self, overrides: dict) -> None:
        value = json.loads(json.dumps(overrides, default=str))  # JSON-safe (paths become strings)
        self._run("saving settings", lambda s: s.merge(SettingRow(key="overrides", value=value)))
