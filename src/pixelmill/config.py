"""Settings: read once at start (environment and/or a TOML file), validated, passed in.

Nothing reads the environment at import time.  ``Settings.load()`` is the one
place that does; everything else receives a ``Settings`` instance.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

ENV_PREFIX = "PIXELMILL_"


class ConfigError(ValueError):
    """Settings that cannot be used; the message is one line per bad setting, naming it."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pixelmill"


class Settings(BaseSettings):
    """Every knob of a pixelmill process.  Environment variables use the ``PIXELMILL_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="PIXELMILL_", extra="forbid", env_nested_delimiter="__")

    # where things live
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # default: sqlite:///<data_dir>/pixelmill.db (WAL)
    models_catalog: Path | None = None  # TOML model catalog; default: the built-in catalog
    #: how long a write waits for a database lock (SQLite busy timeout, PostgreSQL lock_timeout)
    #: before the request answers 503 ``database_busy`` with Retry-After
    db_busy_timeout_s: float = Field(default=15.0, gt=0)

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = None  # e.g. https://images.example.com; default http://host:port
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    #: a list setting: JSON (``["https://a.example"]``) or comma-separated (``https://a.example,https://b.example``)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # engine
    queue: Literal["inprocess", "celery"] = "inprocess"
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: embedded mode: threads for node runs of image models.  Two by default: generations run side by
    #: side on the CPU (each on one torch thread while the other runs, on every core while it runs
    #: alone); a model that generates one at a time (a GPU, speed options) keeps the second waiting
    worker_threads: int = 2
    #: embedded mode: threads for node runs that use no image model (load, resize, crop, upscale,
    #: background removal…), apart from the model threads, so they never wait behind a generation;
    #: 0: they share the model threads
    light_worker_threads: int = Field(default=1, ge=0)
    #: CPU threads each node run gives PyTorch; 0: automatic (the cores shared by the node runs at a
    #: time, less one for the API and database where this process serves them too; there, a run
    #: takes every core while nothing else wants one: see pixelmill.models.threads).  One thread
    #: per core at most: a torch thread that waits for a core holds its peers back
    torch_threads: int = Field(default=0, ge=0)
    node_timeout_s: float = 600.0
    #: scale-out: a queued node run whose task never reached the queue (broker down at
    #: that moment) is published again after this many seconds; 0 turns the sweeper off
    republish_after_s: float = 30.0
    result_ttl_s: int = 24 * 3600  # how long get_result knows an execution
    #: a poll of an unfinished execution may be answered from a view read this many seconds ago at
    #: most, unless a notice of a change came since (every state change sends one); 0: always read
    live_view_ttl_s: float = Field(default=0.5, ge=0)
    #: the same for a queued execution, whose view changes by notices (it starts, it is cancelled) but
    #: for its queue position, which costs a pass over the waiting runs: that may be this old
    queued_view_ttl_s: float = Field(default=2.0, ge=0)
    #: load the default models in the background at start in every process that runs nodes
    #: (the embedded server, `pixelmill worker`); /readyz reports the progress
    preload_models: bool = True
    #: OpenTelemetry traces (a span per HTTP request and per node run); also on when
    #: ``OTEL_TRACES_EXPORTER`` names an exporter. The ``OTEL_*`` variables configure the rest
    tracing: bool = False
    warm_models: Annotated[list[str], NoDecode] = Field(default_factory=list)  # the default models; empty: every catalog model
    #: "fair": the scheduler picks the next node run (plan priority, weighted fair share
    #: between accounts, request priority, deadlines); "fifo": in order of arrival
    scheduler: Literal["fair", "fifo"] = "fair"
    #: memory a worker may fill with models (MiB; None: no limit): host RAM for models on the
    #: CPU, VRAM for models on a CUDA device; least recently used idle models make room
    model_ram_budget_mb: float | None = Field(default=None, gt=0)
    model_vram_budget_mb: float | None = Field(default=None, gt=0)
    model_idle_unload_s: float | None = Field(default=None, gt=0)  # unload a model unused this long
    #: where compiled kernels of models with ``compile = true`` are kept across restarts
    #: (default: <data_dir>/compile-cache)
    compile_cache_dir: Path | None = None
    fair_window_s: float = Field(default=300.0, gt=0)  # how far back an account's used run time counts
    #: scale-out model affinity: a worker prefers waiting runs of the models it holds and leaves a run
    #: to a better-placed worker for at most this many seconds of its wait (0: no affinity)
    affinity_max_wait_s: float = Field(default=30.0, ge=0)
    background_onnx_path: str | None = None  # a general-object saliency model (U2-Net / IS-Net / BiRefNet) for remove_background

    # files
    secret_key: str | None = None  # signs result URLs; default: generated once, kept in data_dir
    signed_url_ttl_s: int = 600
    file_retention_s: int = 7 * 24 * 3600
    # retention (the janitor): result files go when their execution expires (result_ttl_s, or the
    # shorter Pixelmill-Retention a request asked for); the execution's rows go this long after
    retention_executions_s: float = Field(default=30 * 24 * 3600, ge=0)
    retention_events_s: float = Field(default=7 * 24 * 3600, ge=0)  # progress/preview events of finished executions
    janitor_interval_s: float = Field(default=300.0, ge=0)  # 0: no janitor in this process

    # accounts
    admin_key: str | None = None
    rate_limit_storage: str = "memory://"
    idempotency_ttl_s: int = 24 * 3600
    default_plan: str = "free"
    #: Requests with an unknown or revoked key allowed per client address per minute
    #: (None: unlimited); past it that address gets 429 for every keyed request.
    auth_failures_per_minute: int | None = Field(default=30, ge=1)
    plans: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # moderation (safety_tolerance 0 strict .. 6 permissive)
    #: a TOML file of prompt rules added to the shipped ones (``replace = true`` in it replaces them)
    moderation_policy_path: Path | None = None
    #: the output image classifier: ``auto`` (open_nsfw where installed), ``open_nsfw``, ``none``
    moderation_image_classifier: Literal["auto", "open_nsfw", "none"] = "auto"
    #: classifier score that withholds an image, per tolerance 0..6; JSON or comma-separated
    moderation_image_thresholds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.15, 0.3, 0.5, 0.7, 0.85, 0.95, 1.01], min_length=7, max_length=7
    )

    # provenance of stored outputs (pixelmill[provenance])
    #: PEM certificate chain (leaf first) and private key: every stored image gets a signed C2PA manifest
    c2pa_sign_cert_path: Path | None = None
    c2pa_private_key_path: Path | None = None
    c2pa_alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = "es256"
    c2pa_tsa_url: str | None = None  # an RFC 3161 time-stamp authority for the signatures
    #: an invisible DWT-DCT watermark (1-16 bytes of UTF-8) in every stored image of at least 256 px a side
    watermark_text: str | None = None
    #: zlib level of PNG outputs (0-9).  1 by default: a textured 1024x1024 image encodes in 116 ms
    #: instead of 284 ms at level 6, for a file 13 % larger (bench/png_levels.py)
    png_compress_level: int = Field(default=1, ge=0, le=9)

    # outbound HTTP (webhooks, image URLs)
    #: networks outbound fetches may reach although private; JSON or comma-separated (``127.0.0.0/8,10.0.0.0/8``)
    url_allow_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # webhooks, live progress, synchronous waits
    webhook_dispatcher: bool = True  # run the delivery thread in this process (several may run: claims are atomic)
    webhook_file_url_ttl_s: int = 24 * 3600  # validity of result URLs inside webhook bodies
    webhook_retention_days: float = Field(default=30.0, gt=0)  # finished webhook events and their attempt logs are kept this long
    max_wait_s: int = 60  # cap of ``Prefer: wait=N`` on submit endpoints
    #: how waiters (``Prefer: wait``, SSE, OpenAI) learn that an execution changed: ``local`` (one process),
    #: ``postgres`` (LISTEN/NOTIFY), ``redis`` (pub/sub on ``broker_url``); ``auto`` picks local for the
    #: embedded queue, else postgres on PostgreSQL, else redis
    notifier: Literal["auto", "local", "postgres", "redis"] = "auto"
    #: waiters re-read the store this often even without a notice (the safety net)
    wait_poll_s: float = Field(default=2.0, gt=0)
    sync_timeout_s: float = Field(default=300.0, gt=0)  # how long synchronous APIs (OpenAI Images) wait for a result

    @field_validator("signed_url_ttl_s", "port", "worker_threads")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _list_from_text(cls, value: Any, info: ValidationInfo) -> Any:
        """A list setting given as text (an environment value): a JSON array, or comma-separated
        items.  Every list setting is declared ``Annotated[list[...], NoDecode]`` so the text reaches here."""
        field = cls.model_fields.get(info.field_name or "")
        if not isinstance(value, str) or field is None or get_origin(field.annotation) is not list:
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as e:
                raise ValueError(f"not a valid JSON list ({e}); give a JSON array or comma-separated values") from None
        return [item.strip() for item in text.split(",") if item.strip()]

    @field_validator("url_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network (e.g. 127.0.0.0/8 or ::1/128)") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    @classmethod
    def load(cls, config_file: str | os.PathLike | None = None, **overrides: Any) -> "Settings":
        """Build settings from (lowest to highest priority) a TOML file, the environment, overrides."""
        file_values: dict[str, Any] = {}
        path = config_file or os.environ.get("PIXELMILL_CONFIG")
        if path:
            with open(path, "rb") as f:
                file_values = tomllib.load(f)
        try:
            env_only = cls()  # environment (and defaults)
            merged = {**file_values, **env_only.model_dump(exclude_unset=True), **overrides}
            return cls(**merged)
        except ValidationError as e:
            raise ConfigError(describe_errors(e)) from None
        except SettingsError as e:  # a complex value (plans ...) that is not JSON
            match = re.search(r'field "([^"]+)"', str(e))
            name = match.group(1) if match else "?"
            raise ConfigError(f"invalid setting {ENV_PREFIX}{name.upper()} ({name}): not valid JSON: {e.__cause__ or e}") from None


    # derived values -------------------------------------------------------
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'pixelmill.db'}"

    def resolved_models_catalog(self) -> Path | None:
        """The catalog file: ``models_catalog``, else ``models.toml`` in the data directory
        (where ``pixelmill models add`` writes), else None (the built-in catalog)."""
        if self.models_catalog:
            return self.models_catalog
        local = self.data_dir / "models.toml"
        return local if local.is_file() else None

    def resolved_base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def resolved_secret_key(self) -> str:
        """The URL-signing key: configured, or generated once and kept in the data dir."""
        if self.secret_key:
            return self.secret_key
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.data_dir / "secret.key"
        if not key_file.exists():
            tmp = key_file.with_suffix(".tmp")
            tmp.write_text(secrets.token_urlsafe(32))
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, key_file)  # atomic: first writer wins
            except FileExistsError:
                pass
            tmp.unlink(missing_ok=True)
        return key_file.read_text().strip()

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"


def describe_errors(error: ValidationError) -> str:
    """One line per invalid setting: ``PIXELMILL_NAME (name): what is wrong``."""
    lines = []
    for err in error.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        name = loc[0] if loc else "settings"
        where = f"{ENV_PREFIX}{name.upper()} ({'.'.join(loc)})" if loc else "settings"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"invalid setting {where}: {message}")
    return "\n".join(lines)
