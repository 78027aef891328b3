"""Process settings: ``config/engine.yaml`` overlaid with ``INTERLINK_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from engine.backpressure import BacklogSettings
from engine.config import yamlfile
from engine.config.model import Model
from engine.store.retention import RetentionSettings
from engine.transform.limits import Limits

DEFAULT_CONFIG = Path("config/engine.yaml")
ENV_PREFIX = "INTERLINK_"


class SweeperSettings(Model):
    """Recovery of messages the store says are unfinished."""

    interval_s: float = Field(30, gt=0, description="How often the sweeper runs.")
    grace_s: float = Field(
        60, ge=0, description="A message untouched for this long with no final status is re-enqueued."
    )


class HttpTLSSettings(Model):
    """TLS for the engine's HTTP server (webhooks, probes, and later the admin API)."""

    cert_file: Path = Field(description="PEM certificate (chain) the server presents.")
    key_file: Path = Field(description="PEM private key of cert_file (unencrypted).")
    ca_file: Path | None = Field(
        None,
        description="PEM CA certificates trusted to sign client certificates. When set, clients may present one "
        "(verified against these); channels with `auth: {type: mtls}` then require it.",
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Oldest TLS protocol version accepted.")


class Settings(Model):
    """Settings of one engine process."""

    data_dir: Path = Field(Path("data"), description="Folder for the SQLite store and file outputs.")
    database_url: str = Field("sqlite:///data/interlink.db", description="SQLAlchemy URL of the message store.")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite only: FULL commits survive a power loss before the ACK; NORMAL survives a crash "
        "of the engine but not of the machine, and ingests several times faster.",
    )
    queue_url: str = Field("memory://", description="Broker URL: memory://, redis://…, amqp://….")
    queue_namespace: str = Field(
        "interlink",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Redis only: prefix of every queue key (namespace:queue), so several engines or test runs "
        "can share one Redis database. Every process of one engine must use the same. RabbitMQ separates "
        "engines by the virtual host in queue_url instead.",
    )
    channels_dir: Path = Field(Path("channels"), description="Folder of channel files.")
    channels_watch_s: float = Field(
        0,
        ge=0,
        description="`interlink run` and `interlink worker` look at the channel and mapping files (mappings_dir, "
        "mapping_overlays) this often (seconds) and apply a change as `interlink reload` does (an invalid file is "
        "logged with its file:line and the running version stays); 0: not watched.",
    )
    mappings_dir: Path = Field(Path("mappings"), description="Folder of mapping files.")
    mapping_overlays: list[Path] = Field(
        default_factory=list,
        description="Site folders laid out like mappings_dir, applied over it in order: a map of the same name "
        "replaces the base one (with `merge: true`, only the rules or codes it lists); a new name adds a map "
        "(a site's Z-segment maps). The base files are never copied or edited.",
    )
    site_functions: list[str] = Field(
        default_factory=list,
        description="Installed `interlink.functions` entry points whose functions maps may call (a site's own "
        "conversions, checked like the built-ins); none is loaded unless named here.",
    )
    worker_threads: int = Field(8, ge=1, le=256, description="Worker threads per process.")
    mapping_processes: int | Literal["auto"] = Field(
        "auto",
        description="Child processes that run the mapping (parse + map), so it gets a CPU core of its own; "
        "0 maps in the worker threads. auto: one per core beyond the first, at most 4.",
    )
    ingest_batch_max: int = Field(200, ge=1, description="Most messages committed in one ingest transaction.")
    ingest_batch_wait_ms: float = Field(
        0, ge=0, le=1000, description="How long the ingest writer waits to fill a batch (0: commit when free)."
    )
    sweeper: SweeperSettings = Field(default_factory=SweeperSettings, description="Recovery sweeper.")
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="How long finished messages are kept (content_days, metadata_days; unset: for ever; a "
        "channel's `retention:` overrides them) and how `interlink run` prunes (interval, batch size, pause).",
    )
    backlog: BacklogSettings = Field(
        default_factory=BacklogSettings,
        description="Back-pressure: each channel's backlog of unfinished messages is bounded (a channel's "
        "`backlog:` may change the bounds): past slow_at replies are delayed, at refuse_at messages are refused "
        "without being committed (MLLP AE, webhook 503, DICOM 0xA700).",
    )
    limits: Limits = Field(
        default_factory=Limits,
        description="Caps on one HL7 message and batch (bytes, segments, repetitions, components, batch "
        "messages): over one the message is refused (AR naming the cap). Held at every source and by the "
        "worker; a channel's own `limits:` may only lower them.",
    )
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: not served)."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the /metrics endpoint listens on.")
    http_host: str = Field(
        "127.0.0.1", description="Address the HTTP server (webhooks, probes, admin API, dashboard) listens on."
    )
    http_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="Port of the HTTP server: webhook channels, /healthz, /readyz, /openapi.json (0: not served; "
        "webhook channels then cannot start).",
    )
    http_tls: HttpTLSSettings | None = Field(
        None, description="Serve HTTPS (optionally mutual TLS); plain HTTP when absent."
    )
    http_max_connections: int = Field(
        1000, ge=1, description="Concurrent HTTP connections; more are answered 503 by the server."
    )
    http_shutdown_grace_s: float = Field(
        5.0, ge=0, description="On stop, how long requests in progress (and their commits) may take to finish."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    fhir_base_url: str = Field(
        "", description="Informational: INTERLINK_FHIR_BASE_URL is read by the example channels themselves."
    )

    def mapping_process_count(self) -> int:
        if self.mapping_processes != "auto":
            return int(self.mapping_processes)
        return max(0, min((os.cpu_count() or 1) - 1, 4))

    @classmethod
    def load(cls, path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
        """Read the settings file (default ``config/engine.yaml`` when present) and apply env overrides."""
        env = dict(os.environ if env is None else env)
        path = path or (Path(env["INTERLINK_CONFIG"]) if env.get("INTERLINK_CONFIG") else None)
        data: dict[str, Any] = {}
        doc = None
        if path is not None or DEFAULT_CONFIG.exists():
            doc = yamlfile.load(path or DEFAULT_CONFIG)
            if doc.data is not None and not isinstance(doc.data, dict):
                raise doc.error("settings file must be a mapping")
            data = dict(doc.data or {})
        for key, value in env.items():
            if not key.startswith(ENV_PREFIX) or key == "INTERLINK_CONFIG":
                continue
            parts = key[len(ENV_PREFIX) :].lower().split("__")
            if parts[0] not in cls.model_fields:
                continue
            target = data
            for p in parts[:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = value
        if doc is not None:
            return doc.validate(cls, data)
        return cls.model_validate(data)
