"""Every setting of Solder, read from `SOLDER_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def fernet_keys(text: str) -> list[bytes]:
    """The comma-separated Fernet keys in `text`, or ValueError (which never quotes them)."""
    keys = [key.strip().encode() for key in text.split(",")]
    try:
        for key in keys:
            Fernet(key)
    except ValueError:
        keys = []
    if not keys:
        raise ValueError(
            "must be Fernet keys (32 url-safe base64-encoded bytes), separated by commas; "
            "`solder secret-key` makes one"
        )
    return keys


class Settings(BaseSettings):
    """Solder's configuration; each field is documented in docs/settings.md."""

    model_config = SettingsConfigDict(env_prefix="SOLDER_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".solder"),
        description="Directory for Solder's own files: the SQLite database (by default) "
        "and, in dev mode, the dev API key.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the database. Empty means a SQLite file "
        "`solder.db` under the data directory. `sqlite:///path.db` and "
        "`postgresql://user@host/db` are accepted.",
    )
    host: str = Field(default="127.0.0.1", description="Interface `solder serve` listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port `solder serve` listens on.")
    access_log: bool = Field(
        default=False,
        description="Log one line per HTTP request (method, path, status) on standard error. "
        "Off by default: it costs the logs endpoint about 5 % of its throughput "
        "(bench/RESULTS.md), and a proxy in front usually logs requests already. "
        "`solder serve --dev` turns it on.",
    )
    http_allow_private_networks: bool = Field(
        default=False,
        description="Let the `http` connector call loopback and private addresses "
        "(127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7, ::1). "
        "Link-local and cloud-metadata addresses are refused whatever this says.",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="How many processes `solder serve` runs, each serving the API and "
        "running executions, each with its own socket on the port (SO_REUSEPORT); a "
        "supervisor restarts one that dies. On SQLite they share the file and take turns "
        "to write: at most one per core, and only where one leaves cores free "
        "(bench/RESULTS.md).",
    )
    worker_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="How many executions one process runs at once: the embedded worker pool "
        "of `solder serve`, or each `solder worker` (its `--concurrency` overrides this). "
        "Unset: 8 on SQLite, 16 on PostgreSQL (`Settings.concurrency`).",
    )
    queue_high_water: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="PostgreSQL: while this many accepted runs wait for a worker, "
        "accepting another waits for the workers to take some, for at most a second "
        "(then it is queued all the same). Keeps the queue, and each run's wait in it, "
        "short when runs come in faster than the workers run them.",
    )
    worker_timeout_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="PostgreSQL: within this time, the executions of a worker that died "
        "are marked `crashed` and resumed by another. Workers heartbeat every sixth of it; "
        "one silent for two thirds of it is presumed dead.",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body the API accepts, in bytes; larger bodies get 413.",
    )
    http_timeout_ms: int = Field(
        default=30_000,
        ge=1,
        description="Timeout of one `http` block request when the block sets no `timeoutMs`.",
    )
    http_max_response_bytes: int = Field(
        default=5_242_880,
        ge=1024,
        description="Largest response body an `http` block accepts, in bytes; a larger "
        "one fails the block (it would be stored in the execution log).",
    )
    expression_timeout_ms: int = Field(
        default=1000,
        ge=1,
        description="How long one `{{ }}` expression may run before it fails its block.",
    )
    log_retention_days: float = Field(
        default=7.0,
        gt=0,
        description="How long execution logs are kept, counted from when the execution "
        "started; ended executions older than this are purged (running ones never are).",
    )
    retention_sweep_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often expired logs are looked for; each sweep purges them in "
        "small batches so that it never holds the database for long.",
    )
    log_dictionaries: bool = Field(
        default=True,
        description="Compress each tenant's stored logs with a zstd dictionary trained on "
        "its own logs (a seed-shaped log takes about 110 bytes instead of 550). Trained "
        "once a tenant has 1,000 logs, kept per tenant, never shared. `false`: new logs "
        "are compressed without (stored ones stay readable) and no dictionary is trained.",
    )
    compaction_sweep_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often the compaction sweep runs: it trains each tenant's log "
        "dictionary when due, recompresses the stored logs a new one applies to in small "
        "paced batches, and deletes dictionaries no stored log needs.",
    )
    schedule_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often schedule-triggered workflows are checked for a cron tick "
        "that has come; a run starts at most this long after its tick.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="The key that encrypts credentials at rest: a Fernet key (make one with "
        "`solder secret-key`), or several separated by commas to rotate (the first "
        "encrypts, all decrypt). Unset: a key is generated into `<data dir>/secret.key` "
        "on first start, with a warning to back it up.",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Database connections each process keeps open for requests and runs. "
        "A request that finds them all busy waits for one (up to 30 s, then 503) rather "
        "than opening more: each process holds at most this many.",
    )
    sqlite_synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description="SQLite `synchronous` pragma. `normal` (with WAL) survives any process "
        "crash; `full` also survives a power loss, at some cost in write speed.",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="On shutdown (SIGTERM), how long running executions get to finish before "
        "they are interrupted; an interrupted one resumes after its last finished block, at "
        "the next start (SQLite) or on another worker (PostgreSQL). 0 interrupts at once.",
    )

    @field_validator("secret_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            fernet_keys(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'solder.db'}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def concurrency(self) -> int:
        """How many executions one process runs at once: `worker_concurrency`, or by
        default 8 on SQLite and 16 on PostgreSQL. SQLite's one process ran 0.8 times the
        runs a second with 16; PostgreSQL's workers 1.02 to 1.12 times with 16 than with
        8, each fetch taking more jobs at once (bench/RESULTS.md)."""
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        return 8 if self.is_sqlite else 16
