"""Settings in one place: defaults < config file (TOML) < MASKWATCH_* environment variables.

Nested fields use `__` in environment variables, e.g. `MASKWATCH_SMTP__HOST=mail.example.org`.

Example:
    >>> s = Settings(data_dir="/tmp/maskwatch-doc")
    >>> s.detector.backend, s.smtp.host, s.alerts.incorrect_mask_alerts   # auto: YuNet when available
    ('auto', None, True)
"""

from __future__ import annotations

import os
import re
from email.utils import parseaddr
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

YUNET_URL = (
    "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
    "face_detection_yunet_2023mar.onnx"
)
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


def default_data_dir() -> Path:
    return Path(os.environ.get("MASKWATCH_DATA_DIR") or platformdirs.user_data_dir("maskwatch"))


def private_data_dir(path: Path) -> Path:
    """Create `path` (the data directory: database with the SMTP password, snapshots of faces, the
    session key) readable by this user only: folders 0700, files 0600, existing ones included; and make
    files this process creates from now on private too (umask 077)."""
    os.umask(0o077)
    path.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o700)
        for name in files:
            f = Path(root) / name
            if not f.is_symlink():
                os.chmod(f, 0o600)
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
    return path


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("maskwatch"))


class DetectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    backend: Literal["auto", "yunet", "res10"] = "auto"  # auto: YuNet when available, else res10
    yunet_path: Path | None = None  # a local YuNet ONNX; else cached download
    yunet_url: str = YUNET_URL
    yunet_sha256: str = YUNET_SHA256
    allow_download: bool = True
    score_threshold: float = Field(0.6, ge=0.05, le=0.99)
    min_face_px: int = Field(16, ge=8)
    detect_every: int = Field(1, ge=1, le=10)  # live video: run the detector every Nth frame, track between
    # photos (uploads, `detect` on image files, `evaluate`): also search the mirror image, and inside a
    # border when nothing is found (tight face crops); video streams never (it doubles detection time)
    thorough_stills: bool = True


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    model_dir: Path | None = None  # None: the bundled defaults in maskwatch/models
    uncertain_threshold: float | None = Field(None, ge=0.5, le=1.0)  # None: the model card's value
    reclassify_every: int = Field(10, ge=1)  # frames between re-classifying a stable track


QUIET_HOURS_RE = re.compile(r"([01]?\d|2[0-3]):[0-5]\d\s*-\s*([01]?\d|2[0-3]):[0-5]\d")


class CameraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    name: str
    source: str  # camera index ("0"), video file path, or rtsp/http URL
    enabled: bool = True
    quiet_hours: str | None = None  # "22:00-06:00": no alerts from this camera in that window
    # (local time; several windows: "12:00-13:00, 22:00-06:00")
    max_fps: float | None = Field(None, gt=0, le=120)  # process at most this many frames a second
    cpus: float | None = Field(None, gt=0, le=64)  # on a Ray cluster: CPUs it reserves (cluster.camera_cpus)

    @field_validator("quiet_hours")
    @classmethod
    def _check_quiet_hours(cls, v: str | None) -> str | None:
        for part in (v or "").split(","):
            if part.strip() and not QUIET_HOURS_RE.fullmatch(part.strip()):
                raise ValueError(f"quiet hours must look like '22:00-06:00', got {part.strip()!r}")
        return v or None


class ClusterSettings(BaseModel):
    """Cameras as Ray actors on a cluster (`serve --ray`, extra `cluster`; docs/cluster.md)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None  # a Ray address ("127.0.0.1:6379", "auto"); None: this machine, no Ray
    camera_cpus: float = Field(1.0, gt=0, le=64)  # CPUs a camera's actor reserves (placement)
    max_restarts: int = Field(-1, ge=-1)  # a camera's actor is restarted this often (-1: always)
    namespace: str = "maskwatch"


class MonitorSettings(BaseModel):
    """The monitoring engine (maskwatch.monitor): its thread budget and how it degrades under load."""

    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    workers: int = Field(0, ge=0, le=64)  # vision worker threads for all cameras; 0: one per CPU core
    # detection interval under load (and on still scenes): detect every Nth frame at most, track between
    max_detect_interval: int = Field(6, ge=1, le=30)
    stall_after_s: float = Field(3.0, gt=0)  # a running camera without a frame this long is "stalled"


_EMAIL_RE = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*$")


def check_email_address(value: str) -> str:
    """`value` stripped if it is an address ("a@example.org" or "Name <a@example.org>"), else ValueError."""
    value = value.strip()
    _name, addr = parseaddr(value)
    bare = "<" not in value
    matches = addr == value if bare else value.endswith(f"<{addr}>")
    if not _EMAIL_RE.match(addr) or not matches:
        raise ValueError(f"not a valid email address: {value!r}")
    return value


class SmtpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    host: str | None = None  # None: emails stay in the outbox, viewable in the app
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    sender: str = "maskwatch@localhost"
    recipients: list[str] = []
    timeout_s: float = 10.0
    ca_file: Path | None = None  # extra CA certificate(s) to trust, e.g. a self-signed server certificate
    retry_initial_s: float = Field(30.0, gt=0)  # outbox retry backoff: doubles per attempt ...
    retry_max_s: float = Field(3600.0, gt=0)  # ... up to this
    max_attempts: int = Field(8, ge=1)  # then the message is marked failed

    @field_validator("sender")
    @classmethod
    def _check_sender(cls, v: str) -> str:
        return check_email_address(v)

    @field_validator("recipients", mode="before")
    @classmethod
    def _check_recipients(cls, v):
        if isinstance(v, str):  # "a@x.org, b@y.org" from an environment variable or a form
            v = [part for part in v.split(",") if part.strip()]
        if not isinstance(v, (list, tuple)):
            raise ValueError("recipients must be a list of email addresses")
        return [check_email_address(str(a)) for a in v]


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    enabled: bool = True
    incorrect_mask_alerts: bool = True  # a mask worn with nose or mouth uncovered alerts like no mask
    min_frames: int = Field(5, ge=1)
    min_seconds: float = Field(1.0, ge=0)
    min_confidence: float = Field(0.8, ge=0.5, le=1.0)
    cooldown_s: float = Field(300, ge=0)
    digest_minutes: float = Field(0, ge=0)  # 0: one email per alert
    max_emails_per_hour: int = Field(30, ge=1)
    reentry_radius: float = Field(2.0, ge=0)  # in face widths: a new track starting this close to where
    # an alerted person left (same camera, within cooldown_s) is taken as that person; 0 disables
    base_url: str = "http://127.0.0.1:8000"  # used for links in emails


class MqttSettings(BaseModel):
    """MQTT integration (maskwatch.integrations.mqtt; needs the `mqtt` extra). Off while `url` is None."""

    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    url: str | None = None  # "mqtt://user:pass@host:1883" or "mqtts://..." (TLS); None: off
    ca_file: Path | None = None  # mqtts: an extra CA to trust (e.g. a self-signed broker certificate)
    topic_prefix: str = "maskwatch"
    snapshots: bool = False  # events carry the snapshot JPEG (base64)
    homeassistant: bool = False  # Home Assistant MQTT discovery (homeassistant/... config topics)
    client_id: str | None = None  # None: "maskwatch-<host>-<pid>"
    qos: int = Field(1, ge=0, le=2)  # events; at least once needs >= 1
    state_every_s: float = Field(5.0, gt=0)  # camera state is republished this often (and on change)
    max_pending: int = Field(10000, ge=1)  # events kept in memory until the broker acknowledges them

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"mqtt.url must look like 'mqtt://[user:pass@]host[:port]' (or mqtts): {v!r}")
        parts.port  # noqa: B018 - raises ValueError on a bad port
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or any(c in v for c in "+#\x00"):
            raise ValueError("mqtt.topic_prefix must be a non-empty topic without + or #")
        return v


class PrivacySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    gender_enabled: bool = True
    blur_snapshots: bool = False
    retention_days: int = Field(30, ge=1)


def machine_timezone() -> str:
    """The IANA name of this machine's time zone ($TZ, else the /etc/localtime link), else "UTC"."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        candidates.append(str(localtime.resolve()).partition("zoneinfo/")[2])
    for name in candidates:
        try:
            if name:
                ZoneInfo(name)
                return name
        except (ValueError, ZoneInfoNotFoundError):
            continue
    return "UTC"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(default_factory=machine_timezone)  # IANA name: every time the pages show

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ValueError, ZoneInfoNotFoundError) as exc:
            raise ValueError(f"not an IANA time zone name: {v!r} (e.g. Europe/Berlin, UTC)") from exc
        return v


class WebSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a config file is an error

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    secret_key: str | None = None  # None: generated once and kept in the data directory
    max_upload_mb: int = Field(25, ge=1)
    uploads_per_minute: int = Field(20, ge=1)  # photos + videos per user (/upload, /api/detect)
    browser_webcam: bool = True
    # proxies (IPs or CIDRs) whose X-Forwarded-For is believed: the client is the right-most address
    # there that is not one of them; from any other peer the header is ignored
    trusted_proxies: list[str] = []
    # client addresses (IPs or CIDRs) that may read /metrics without a token; empty: a token only
    metrics_allow: list[str] = []

    @field_validator("trusted_proxies", "metrics_allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for p in v:
            try:
                ipaddress.ip_network(p.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP address or network: {p!r}") from exc
        return [p.strip() for p in v]


class WebhookSettings(BaseModel):
    """One webhook (maskwatch.integrations.webhooks): each stored alert event is POSTed to `url` as JSON,
    signed with `secret` (header X-Maskwatch-Signature: sha256=HMAC-SHA256 of the body)."""

    model_config = ConfigDict(extra="forbid")

    url: str  # http:// or https://
    secret: str | None = Field(None, repr=False)  # never shown (pages, API, logs)
    name: str | None = None  # shown in the app and stored with each delivery; default: the URL
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhooks.url must be an http:// or https:// URL: {v!r}")
        parts.port  # noqa: B018 - raises ValueError on a bad port
        return v

    @property
    def key(self) -> str:
        """How its deliveries name it: `name`, else the URL without user and password."""
        if self.name:
            return self.name
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # None: SQLite file in data_dir
    detector: DetectorSettings = DetectorSettings()
    models: ModelSettings = ModelSettings()
    cameras: list[CameraSettings] = []
    monitor: MonitorSettings = MonitorSettings()
    cluster: ClusterSettings = ClusterSettings()
    smtp: SmtpSettings = SmtpSettings()
    alerts: AlertSettings = AlertSettings()
    privacy: PrivacySettings = PrivacySettings()
    mqtt: MqttSettings = MqttSettings()
    webhooks: list[WebhookSettings] = []
    web: WebSettings = WebSettings()
    server: ServerSettings = ServerSettings()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(v).expanduser()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'maskwatch.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides) -> Settings:
    """Settings from defaults, an optional TOML file (or $MASKWATCH_CONFIG), the environment."""
    path = config_file or os.environ.get("MASKWATCH_CONFIG")
    if path is None:
        return Settings(**overrides)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    return Settings.model_validate(_FromFile(**overrides).model_dump())


def apply_overrides(settings: Settings, overrides: dict) -> Settings:
    """Settings with `overrides` (a nested dict, e.g. from the web settings page) deep-merged on top."""

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            nested = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if nested else value
        return out

    return Settings.model_validate(merge(settings.model_dump(), overrides))
