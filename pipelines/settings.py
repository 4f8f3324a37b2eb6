"""riskstream's settings: small frozen, typed objects read from ``RISKSTREAM_*`` variables.

Secrets (the PII key, webhook URLs) are ``SecretStr``: never printed, never logged.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_KAFKA_", frozen=True)

    # None: riskstream starts the embedded Tansu broker itself (pipelines/broker.py).
    bootstrap: str | None = None
    # Partitions of the topics riskstream creates: at most this many workers share a stream.
    # On the embedded broker the default is EMBEDDED_PARTITIONS instead (`embedded_partitions`).
    partitions: int = Field(4, ge=1)
    replication_factor: int = Field(1, ge=1)
    # Tansu needs 6-10 s: Faust's default makes every start and rebalance wait ~30 s (DESIGN.md).
    session_timeout_s: float = 8.0
    # Batch read size of the confluent-kafka loops (validation gateway, sink).
    consume_batch: int = Field(2000, ge=1)
    # How long a batch read waits to fill: it returns early once `consume_batch` messages are
    # there, so under load batches are full and at low rates latency stays ~this long. The
    # gateway's read makes one message per partition for the worker: 10 ms against 20, five
    # alternating pairs of `riskstream bench`, scored p50 lower in four (fresh broker p99
    # median 255 -> 187 ms), for up to twice the worker's messages at moderate rates (README).
    consume_wait_s: float = Field(0.01, gt=0)
    # How long a fetch waits on the broker for data, on the scoring path (gateway, worker).
    # Tansu does not answer a waiting fetch when data arrives: every hop then costs up to
    # this long (measured: 500 ms -> ~200 ms per hop, 10 ms -> ~3 ms). Kafka answers once
    # `fetch_min_bytes` are there, which a half-loaded scoring path often does not fill. 5 ms
    # against 10, three alternating pairs of `riskstream bench --events 200000 --load-seconds
    # 10`: scored p99 lower in each (after the backlog 290 -> 235 ms median, fresh broker 268
    # -> 219), for ~8 % more of a core in an idle embedded broker (18 -> 26 %; README, Speed).
    fetch_wait_ms: int = Field(5, ge=1)
    # The same for the consumers off the scoring path (sink, loader, dispatcher): every
    # idle fetch costs the broker CPU (Tansu: ~16 % of a core for the sink at 10 ms), and
    # their own batching (flush intervals) dwarfs this wait.
    background_fetch_wait_ms: int = Field(100, ge=1)
    # A fetch returns early once this much data is there. Under load, 1 byte (the clients'
    # default) answers every fetch at once with a sliver of data: thousands of requests a
    # second, which saturated Tansu's core before the pipeline's. With these, a consumer asks
    # at most once per wait unless a good batch is ready.
    fetch_min_bytes: int = Field(64 * 1024, ge=1)
    background_fetch_min_bytes: int = Field(1024 * 1024, ge=1)
    # How long the worker's producer gathers outputs into one request (librdkafka linger.ms).
    # Ten output topics fan out into many partition batches, and Tansu's cost is per batch
    # it holds (pipelines/broker.py: every fetch lists a partition's stored batches).
    output_linger_ms: int = Field(25, ge=0)
    # The same for the validation gateway. It batches by its read already: a message of up
    # to `batch_events` events per input partition per read, produced together once the read
    # is validated; reads are at least `consume_wait_s` apart unless full (then their
    # processing time apart, longer still), so no linger under that gathers more, and a
    # longer one only holds every event that much longer. Dead-letter messages (one per
    # rejection, sent while the read is validated) use this linger too.
    gateway_linger_ms: int = Field(1, ge=0)
    # The worker checkpoints its window and alert state (Faust tables), and the gateway
    # commits its input offsets, at most this often, each after its outputs so far are
    # acknowledged. A worker crash replays at most this much of outputs again (at-least-once;
    # the warehouse deduplicates by event id); the gateway forwards exactly once regardless.
    checkpoint_interval_s: float = Field(1.0, gt=0)
    # A checkpoint's state of one input partition over this many bytes of JSON goes to its
    # table in parts: under a broker's message size limit (Kafka's default 1 MiB).
    checkpoint_chunk_bytes: int = Field(256 * 1024, ge=1024)

    def embedded_partitions(self, workers: int = 1) -> int:
        """Partitions of the topics on the embedded broker: ``partitions`` when it is set,
        else ``EMBEDDED_PARTITIONS``, or ``workers`` if more (each worker needs one).

        Tansu's CPU goes with the partitions it serves, not the events. With 2 partitions
        instead of 4, at 14,500 events/s on this 2-core machine, Tansu used 38-40 % of the
        core it shares with the gateway, the sink and the load instead of 48 %. The scored p99
        fell from 251 / 305 to 149 / 164 ms (README, Speed). A Kafka cluster keeps the default
        of 4, room for four workers."""
        if "partitions" in self.model_fields_set:
            return self.partitions
        return max(EMBEDDED_PARTITIONS, workers)


# Partitions per topic on the embedded broker unless RISKSTREAM_KAFKA_PARTITIONS says otherwise:
# one machine, where `riskstream up` runs one worker unless told more.
EMBEDDED_PARTITIONS = 2


class ValidationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_VALIDATION_", frozen=True)

    max_message_bytes: int = 64 * 1024
    # Events older than this (event time against the wall clock at validation) are rejected
    # as `stale`; 7 days covers delayed batch uploads, anything older is a producer bug.
    max_age_s: int = 7 * 24 * 3600
    max_future_s: int = 300
    dedup_ttl_s: int = 24 * 3600
    # Events per message on the validated-* topics.
    batch_events: int = Field(500, ge=1)


class PiiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_PII_", frozen=True)

    # HMAC-SHA256 key for SSNs, names and addresses. Unset: a development key is used and a loud
    # warning logged at every start (schemas/pii.py).
    hmac_key: SecretStr | None = None


class LakeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_LAKE_", frozen=True)

    path: Path = Path("var/lake")
    # A sink flushes when a table's buffer holds this many rows or is this old.
    flush_rows: int = Field(50_000, ge=1)
    flush_interval_s: float = Field(5.0, gt=0)
    # Housekeeping (sinks/compaction.py). The sink compacts closed hours this often (0: never;
    # `riskstream lake compact` then does it while no sink runs), those that ended this long
    # ago (late rows of an hour keep arriving for a while), and deletes the files a compaction
    # replaced this long after it (longer than any query over the lake).
    compact_every_s: float = Field(0.0, ge=0)
    compact_older_than_s: float = Field(3600.0, ge=0)
    compact_delete_after_s: float = Field(600.0, ge=0)
    # `riskstream lake retain` deletes hour partitions older than this.
    retention_days: int = Field(90, ge=1)


class ClickHouseSettings(BaseSettings):
    """The warehouse: a ClickHouse server, or chDB's embedded database in ``path``."""

    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_CLICKHOUSE_", frozen=True)

    # http(s)://user:password@host:8123/ of a server; None: the embedded chDB database at
    # `path` (a directory that one process at a time can open). May hold a password.
    url: SecretStr | None = None
    # The server's password when the URL has none; it needs no URL encoding (a password in a
    # URL must be percent-encoded if it holds @, :, / or %).
    password: SecretStr | None = None
    path: Path = Path("var/warehouse")
    database: str = Field("riskstream", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # TTLs: raw event tables, and the hourly/daily rollups (applied by `warehouse migrate`).
    raw_retention_days: int = Field(90, ge=1)
    rollup_retention_days: int = Field(730, ge=1)
    # The loader: at most this many records of one partition per insert.
    load_batch_rows: int = Field(20_000, ge=1)
    # ...and a partial batch waits at most this long.
    load_interval_s: float = Field(2.0, gt=0)
    # Retries of a failed insert: exponential backoff from the first delay up to the last.
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_MODEL_", frozen=True)

    seed: int = 42
    # Scored events wait this long for a label before they are learned as genuine.
    label_ttl_s: int = 30 * 24 * 3600
    # The fraud scorers' cold start (agents/fraud.py): the weight of the priors of the
    # label-fed features (0: none), and how many buffered examples a young model replays per
    # learned one (0: none; it helps a model whose labels come days late, and costs precision
    # at the top on a stream where everything starts at once, like the simulator's).
    prior_strength: float = Field(1.0, ge=0)
    replay: int = Field(2, ge=0)
    # Metric samples scoring above this are published on metric-anomalies.
    anomaly_threshold: float = Field(0.9, ge=0, le=1)
    window_size_ms: int = 60_000
    window_grace_ms: int = 10_000
    # Model snapshots (agents/snapshot.py): a directory, shared storage when workers run on
    # several hosts (default: <RISKSTREAM_STATE_DIR>/models); written at most this often per
    # model and partition.
    snapshot_dir: Path | None = None
    snapshot_interval_s: float = Field(60.0, gt=0)
    # Model quality (agents/quality.py) over the last quality_window labelled events per
    # stream, published on model-quality and as gauges at most this often.
    quality_window: int = Field(5_000, ge=1)
    quality_interval_s: float = Field(60.0, gt=0)
    # Champion and challenger (agents/champion.py). Off by default: one model per stream and
    # no cost. On, a challenger scores every fraud event in shadow and learns every label.
    challenger_enabled: bool = False
    # Share of events (a hash of event_id: deterministic, replays decide alike) whose output
    # is the challenger's score and decision; 0 is shadow only.
    challenger_share: float = Field(0.0, ge=0, le=1)
    # What makes a new challenger differ: scorer arguments as JSON, e.g.
    # RISKSTREAM_MODEL_CHALLENGER_PARAMS='{"learning_rate": 0.003, "negative_rate": 0.2}'
    # (seed, min_labels, learning_rate, negative_rate, review_at, decline_at, alert_share,
    # n_reasons, and the cold start's prior_strength, prior_examples, replay, replay_until:
    # agents/fraud.py). Used when the challenger's slot has no snapshot; a snapshot keeps its own.
    challenger_params: dict[str, int | float] = Field(default_factory=dict)
    # A new challenger starts as a copy of the champion's state ("copy": same history,
    # differs from now on by its params) or untrained ("cold": learns from the labels).
    challenger_start: str = Field("copy", pattern=r"^(copy|cold)$")


class AlertSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_ALERT_", frozen=True)

    score_threshold: float = Field(0.9, ge=0, le=1)
    # Rules (agents/rules.py): None is the file shipped in the package (pipelines/rules.yaml).
    # The worker re-reads it, and the `rules` topic, at most this often.
    rules_path: Path | None = None
    rules_reload_s: float = Field(5.0, gt=0)
    # Alerts link here: a Grafana (or the status page) base URL.
    dashboard_url: str = "http://127.0.0.1:3000"
    # Silences written by `riskstream alerts silence`; None: <state_dir>/silences.json.
    silences_path: Path | None = None
    # Channels: each is enabled by its URL or host. Secrets are never printed or logged.
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None      # HMAC-SHA256 key of the webhook signature
    slack_webhook_url: SecretStr | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    email_from: str = "riskstream@localhost"
    email_to: str | None = None                  # comma-separated recipients
    alertmanager_url: str | None = None          # base URL: POST {url}/api/v2/alerts
    timeout_s: float = 5.0
    max_attempts: int = Field(5, ge=1)
    # Retries: exponential backoff with full jitter, from backoff_s up to max_backoff_s.
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKSTREAM_", frozen=True)

    # Where the status page and metrics endpoints bind. Loopback by default: exposing them is
    # an explicit choice.
    bind_host: str = "127.0.0.1"
    status_port: int = 8686
    # Prometheus endpoint of this process; `riskstream up` gives each process its own port.
    metrics_port: int | None = None
    log_level: str = "INFO"
    state_dir: Path = Path("var/state")
    # The worker's own live dashboard, on bind_host (pipelines/worker_services.py); off unless
    # set. `riskstream up` serves one at status_port.
    dashboard_port: int | None = None
    # A report produced by the worker every `report_every` (e.g. 1h); off unless set.
    report_every: str | None = None
    report_since: str = "7d"
    report_horizon: str = "24h"
    report_dir: Path = Path("var/reports")
    report_source: Literal["lake", "clickhouse"] = "lake"
    # CPU placement (pipelines/placement.py): `riskstream up` and `bench` give each worker a
    # core of its own and the other processes the rest, when there is a core to spare.
    pin_workers: bool = True
    # The CPUs this process runs on (`1`, `0,2-3`); unset: wherever the OS puts it.
    cpus: str | None = None
    # How often the worker's interpreter hands the GIL between its threads (Python's default:
    # 5 ms); why, in pipelines/app.py `_tune_interpreter`; measured in README, Speed ("Three
    # hand-offs shortened": scored p99 on a fresh broker median 249 -> 227 ms at 1 ms).
    worker_switch_interval_ms: float = Field(1.0, gt=0)


class Settings:
    """All settings groups; each is read from the environment on first use."""

    @cached_property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings()

    @cached_property
    def validation(self) -> ValidationSettings:
        return ValidationSettings()

    @cached_property
    def pii(self) -> PiiSettings:
        return PiiSettings()

    @cached_property
    def lake(self) -> LakeSettings:
        return LakeSettings()

    @cached_property
    def clickhouse(self) -> ClickHouseSettings:
        return ClickHouseSettings()

    @cached_property
    def model(self) -> ModelSettings:
        return ModelSettings()

    @cached_property
    def alert(self) -> AlertSettings:
        return AlertSettings()

    @cached_property
    def service(self) -> ServiceSettings:
        return ServiceSettings()

    def rule_params(self) -> dict[str, float]:
        """Values an alert rule may name as ``value: $name`` in the rules file."""
        return {"score_threshold": self.alert.score_threshold,
                "anomaly_threshold": self.model.anomaly_threshold}
