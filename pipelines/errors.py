"""The root of riskstream's errors; each subclass says what the operator should do."""


class RiskstreamError(Exception):
    """Base class for errors raised by riskstream."""


class ConfigError(RiskstreamError):
    """A setting is missing or inconsistent.

    Operator action: fix the named ``RISKSTREAM_*`` environment variable.
    """


class BrokerError(RiskstreamError):
    """The Kafka broker could not be started or reached.

    Operator action: check ``RISKSTREAM_KAFKA_BOOTSTRAP``, or unset it to use the embedded broker.
    """


class LakeError(RiskstreamError):
    """The lake could not be read or written.

    Operator action: check ``RISKSTREAM_LAKE_PATH`` exists, is writable and has free space.
    """
