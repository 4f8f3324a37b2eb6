"""Validation of input messages: raw bytes in, a validated dict or a :class:`Rejection` out.

This is the hot path of the validation gateway, so it is pure (no I/O, no clock: the caller
passes ``now_ms``) and does per message only what it must: one ``orjson.loads``, one pydantic
validation, two comparisons and, for applications, three HMACs. Building a rejection reason is
slower, but only rejected messages pay for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from pipelines.settings import PiiSettings, ValidationSettings
from pipelines.topics import APPLICATIONS, LABELS, SYSTEM_METRICS, TRANSACTIONS

from .application import Application
from .common import SCHEMA_ERROR, WireModel, format_ms
from .label import Label
from .metric import Metric
from .pii import REDACTED, SSN_LIKE, PiiHasher
from .transaction import MCC_PATTERN, Transaction

MODEL_OF_STREAM: dict[str, type[WireModel]] = {
    TRANSACTIONS: Transaction,
    APPLICATIONS: Application,
    SYSTEM_METRICS: Metric,
    LABELS: Label,
}

# Values in reasons are cut to this many characters: enough to recognise, not to copy a payload.
_MAX_VALUE_CHARS = 40
# Epoch milliseconds below this (1973-03-03) are almost surely epoch *seconds* sent by mistake.
_SECONDS_NOT_MS_BELOW = 100_000_000_000
_EVENT_ID_IN_TEXT = re.compile(rb'"event_id"\s*:\s*"([^"\\]{1,64})"')
_JSON_TYPE_NAMES = {
    list: "list", str: "string", int: "integer", float: "number", bool: "boolean",
    type(None): "null",
}
_PATTERN_HINTS = {MCC_PATTERN: "must be exactly 4 digits"}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was not accepted; what its dead-letter record says.

    Attributes
    ----------
    kind
        ``invalid_json``, ``oversize``, ``schema``, ``stale`` or ``future`` (``duplicate``
        is the deduplication step's, which this pure function cannot know).
    reason
        One line a producer can act on, ``"<field>: <what is wrong>, got <value>"``. It never
        contains the value of a PII field, nor anything shaped like an SSN.
    event_id
        The message's ``event_id`` when it could be read, else None.
    """

    kind: str
    reason: str
    event_id: str | None


def dead_letter_record(*, source_topic: str, source_partition: int | None,
                       source_offset: int | None, key: str | None, kind: str, reason: str,
                       event_id: str | None, original: str, received_at: int) -> dict:
    """A ``dead-letter`` record (``schemas.outputs.DEAD_LETTER_RECORD``), as the gateway, the
    worker and the alert dispatcher write it; ``original`` already redacted, ``received_at``
    in ms. Here, not beside the Arrow schema: the gateway does not import pyarrow."""
    return {"source_topic": source_topic, "source_partition": source_partition,
            "source_offset": source_offset, "key": key, "kind": kind, "reason": reason,
            "event_id": event_id, "original": original, "received_at": received_at}


class Validator:
    """Validate raw messages of the input streams against their contract.

    Parameters
    ----------
    settings
        Size limit and the accepted event-time window.
    pii
        The HMAC key for the application PII fields.

    Examples
    --------
    >>> from pydantic import SecretStr
    >>> validator = Validator(ValidationSettings(), PiiSettings(hmac_key=SecretStr("k" * 32)))
    >>> validator.validate("system-metrics", b'{"event_id": "m1", "event_time": 1795514400000, '
    ...     b'"host": "web-1", "service": "api", "metric": "cpu", "value": 41.5}',
    ...     now_ms=1795514400000)["stream"]
    'system-metrics'
    >>> validator.validate("system-metrics", b'{"event_id": "m1", "event_time": 1795514400000, '
    ...     b'"host": "web-1", "service": "api", "metric": "cpu", "value": 141.5}',
    ...     now_ms=1795514400000).reason
    "value: must be a percentage 0..100 for metric 'cpu', got 141.5"
    """

    __slots__ = ("_hasher", "_max_age_ms", "_max_age_s", "_max_bytes", "_max_future_ms",
                 "_max_future_s", "_validators")

    def __init__(self, settings: ValidationSettings, pii: PiiSettings) -> None:
        self._max_bytes = settings.max_message_bytes
        self._max_age_s = settings.max_age_s
        self._max_future_s = settings.max_future_s
        self._max_age_ms = settings.max_age_s * 1000
        self._max_future_ms = settings.max_future_s * 1000
        self._hasher = PiiHasher(pii)
        # The core validator of each model, looked up once: model_validate adds a Python call.
        self._validators = {
            stream: model.__pydantic_validator__.validate_python
            for stream, model in MODEL_OF_STREAM.items()
        }

    def validate(self, stream: str, raw: bytes, *, now_ms: int) -> dict[str, Any] | Rejection:
        """Return the validated event, or why it is rejected.

        Checks, in order: size, JSON, a JSON object, the stream's schema (the first error is
        the reason), event time against ``now_ms`` (``stale`` when older than ``max_age_s``,
        ``future`` when more than ``max_future_s`` ahead); then applications have their PII
        replaced by hashes and masks.

        Parameters
        ----------
        stream
            ``transactions``, ``applications``, ``system-metrics`` or ``labels``.
        raw
            The Kafka message value.
        now_ms
            The validator's clock, epoch milliseconds.

        Returns
        -------
        dict or Rejection
            The event's fields with ``event_time`` as int ms and ``"stream"`` added; a new
            dict the caller owns.

        Raises
        ------
        ValueError
            For an unknown stream: a wiring bug, not a bad message.
        """
        validate = self._validators.get(stream)
        if validate is None:
            raise ValueError(f"unknown stream {stream!r}: expected one of "
                             f"{', '.join(MODEL_OF_STREAM)}")
        size = len(raw)
        if size > self._max_bytes:
            return Rejection("oversize",
                             f"message: {size} bytes, over the {self._max_bytes}-byte limit",
                             _event_id_from_text(raw))
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            return Rejection("invalid_json", _invalid_json_reason(raw, error),
                             _event_id_from_text(raw))
        if type(data) is not dict:
            kind = _JSON_TYPE_NAMES.get(type(data), type(data).__name__)
            return Rejection("invalid_json", f"message: expected a JSON object, got {kind}", None)
        try:
            event = validate(data)
        except ValidationError as error:
            return Rejection("schema", _schema_reason(error, MODEL_OF_STREAM[stream]),
                             _event_id_of(data))
        event_time = event.event_time
        if now_ms - event_time > self._max_age_ms:
            return Rejection("stale", self._stale_reason(event_time), event.event_id)
        if event_time - now_ms > self._max_future_ms:
            return Rejection("future", f"event_time: more than {self._max_future_s} s in the "
                                       f"future, got {format_ms(event_time)}", event.event_id)
        # The models hold only plain values (no nested models): their __dict__ is model_dump()
        # at a fraction of the cost.
        out = event.__dict__.copy()
        if stream == APPLICATIONS:
            self._hasher.pseudonymise_application(out)
        out["stream"] = stream
        return out

    def _stale_reason(self, event_time: int) -> str:
        hint = ""
        if 0 <= event_time < _SECONDS_NOT_MS_BELOW:
            hint = " (looks like seconds: event_time is epoch milliseconds)"
        return (f"event_time: more than {self._max_age_s} s in the past, "
                f"got {format_ms(event_time)}{hint}")


def _invalid_json_reason(raw: bytes, error: orjson.JSONDecodeError) -> str:
    reason = f"message: invalid JSON ({error})"
    if b"NaN" in raw or b"Infinity" in raw:
        reason += "; NaN and Infinity are not JSON numbers"
    return reason


def _event_id_of(data: dict[str, Any]) -> str | None:
    event_id = data.get("event_id")
    if type(event_id) is str and 0 < len(event_id) <= 64:
        return event_id
    return None


def _event_id_from_text(raw: bytes) -> str | None:
    # Best effort for messages that are not parsed: a rejection a producer can match to its
    # own logs is worth a regex on the reject path.
    match = _EVENT_ID_IN_TEXT.search(bytes(raw[:4096]))
    return match.group(1).decode("utf-8", errors="replace") if match else None


def _short_repr(value: object) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def _number(limit: object) -> object:
    # Limits of float fields come back as floats: "must be > 0", not "must be > 0.0".
    if type(limit) is float and limit.is_integer():
        return int(limit)
    return limit


def _schema_reason(error: ValidationError, model: type[WireModel]) -> str:
    """Return the rejection reason for the first error of a failed validation."""
    first = error.errors(include_url=False)[0]
    kind = first["type"]
    loc = first["loc"]
    ctx = first.get("ctx") or {}
    value = first.get("input")
    field = str(ctx.get("field") or (loc[0] if loc else "message"))
    show_value = field not in model.PII_FIELDS

    if kind == "missing":
        reason = f"{field}: missing"
        show_value = False
    elif kind == "extra_forbidden":
        name = _short_repr(field)[1:-1]
        reason = (f"{name}: unexpected field '{name}', not in the "
                  f"{model.model_config.get('title')} contract (check the spelling)")
        show_value = False
    elif kind == SCHEMA_ERROR:
        reason = f"{field}: {first['msg']}"
        if ctx.get("hide"):
            show_value = False
        elif "got" in ctx:
            value = ctx["got"]
    elif kind in ("float_type", "int_type", "int_from_float"):
        reason = f"{field}: expected a number"
    elif kind == "string_type":
        reason = f"{field}: expected a string"
    elif kind == "date_type":
        reason = f"{field}: expected a string YYYY-MM-DD"
    elif kind == "greater_than":
        reason = f"{field}: must be > {_number(ctx['gt'])}"
    elif kind == "greater_than_equal":
        reason = f"{field}: must be >= {_number(ctx['ge'])}"
    elif kind == "less_than":
        reason = f"{field}: must be < {_number(ctx['lt'])}"
    elif kind == "less_than_equal":
        reason = f"{field}: must be <= {_number(ctx['le'])}"
    elif kind == "finite_number":
        reason = f"{field}: must be a finite number"
    elif kind == "literal_error":
        reason = f"{field}: must be {ctx['expected']}"
    elif kind == "string_too_short":
        reason = (f"{field}: must not be empty" if ctx.get("min_length") == 1
                  else f"{field}: must be at least {ctx.get('min_length')} characters")
    elif kind == "string_too_long":
        reason = f"{field}: must be at most {ctx.get('max_length')} characters"
        if show_value and isinstance(value, str):
            reason += f", got {len(value)}"
        show_value = False
    elif kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        reason = f"{field}: {_PATTERN_HINTS.get(pattern, f'must match {pattern}')}"
    else:  # a check this module has no wording for: pydantic's own words
        reason = f"{field}: {first['msg'][:1].lower()}{first['msg'][1:]}"

    if show_value:
        reason += f", got {_short_repr(value)}"
    elif field in model.PII_FIELDS and kind.endswith("_type"):
        # The type of a PII value is harmless and tells the producer what it sent.
        reason += f", got {_JSON_TYPE_NAMES.get(type(value), type(value).__name__)}"
    # Defence in depth: an SSN sent in the wrong field must not reach dead-letter either.
    return SSN_LIKE.sub(REDACTED, reason)
