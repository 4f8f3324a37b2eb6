"""Fixtures shared by the test modules. Factories live in their own modules (factories.py,
lake_fixtures.py); fixtures used by one module stay in that module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.broker import EmbeddedBroker, ensure_topics
from pipelines.topics import OUTPUT_TOPICS


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the session, with every riskstream topic (4 partitions).

    Shared: tests that need topics nobody else writes (a consumer reading from the earliest
    offset) start their own ``EmbeddedBroker`` (0.2 s) instead.
    """
    with EmbeddedBroker() as embedded:
        ensure_topics(embedded.bootstrap, partitions=4)
        yield embedded


@pytest.fixture
def bootstrap() -> Iterator[str]:
    """A broker of the test's own with the output topics (4 partitions).

    Not the shared session broker: sinks and loaders read every output topic from the
    earliest offset, so each test needs topics no other test writes (Tansu starts in 0.2 s).
    """
    with EmbeddedBroker() as embedded:
        ensure_topics(embedded.bootstrap, partitions=4, topics=OUTPUT_TOPICS)
        yield embedded.bootstrap
