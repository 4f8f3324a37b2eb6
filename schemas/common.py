"""Field types and helpers shared by the input stream models.

Every model is *strict*: a JSON number is not a string and a string is not a number, so
``"amount": "12.5"`` is rejected rather than guessed at. The one field with two wire forms is
``event_time`` (epoch milliseconds or an ISO-8601 string with a timezone); it is normalised
to int milliseconds since the epoch, UTC.

Validators here raise :func:`schema_error`, whose message is the "what is wrong" part of a
rejection reason (``"unknown ISO 4217 code"``); :mod:`schemas.validation` adds the field name
and the value given, except for PII fields, whose values are never echoed.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# The pydantic error type of every error raised by riskstream's own validators.
SCHEMA_ERROR = "riskstream_schema"

# ISO 4217 List One (active codes), including the fund and X-codes. Kept for now though being
# withdrawn: ANG (replaced by XCG in 2025), BGN (euro from 2026-01-01), SLL (redenominated to
# SLE), ZWL (replaced by ZWG in 2024), so that late events from a changeover still validate.
# Dropped: HRK (euro since 2023) and CUC (withdrawn 2021).
CURRENCY_CODES: frozenset[str] = frozenset({
    'AED', 'AFN', 'ALL', 'AMD', 'ANG', 'AOA', 'ARS', 'AUD', 'AWG', 'AZN', 'BAM', 'BBD', 'BDT',
    'BGN', 'BHD', 'BIF', 'BMD', 'BND', 'BOB', 'BOV', 'BRL', 'BSD', 'BTN', 'BWP', 'BYN', 'BZD',
    'CAD', 'CDF', 'CHE', 'CHF', 'CHW', 'CLF', 'CLP', 'CNY', 'COP', 'COU', 'CRC', 'CUP', 'CVE',
    'CZK', 'DJF', 'DKK', 'DOP', 'DZD', 'EGP', 'ERN', 'ETB', 'EUR', 'FJD', 'FKP', 'GBP', 'GEL',
    'GHS', 'GIP', 'GMD', 'GNF', 'GTQ', 'GYD', 'HKD', 'HNL', 'HTG', 'HUF', 'IDR', 'ILS', 'INR',
    'IQD', 'IRR', 'ISK', 'JMD', 'JOD', 'JPY', 'KES', 'KGS', 'KHR', 'KMF', 'KPW', 'KRW', 'KWD',
    'KYD', 'KZT', 'LAK', 'LBP', 'LKR', 'LRD', 'LSL', 'LYD', 'MAD', 'MDL', 'MGA', 'MKD', 'MMK',
    'MNT', 'MOP', 'MRU', 'MUR', 'MVR', 'MWK', 'MXN', 'MXV', 'MYR', 'MZN', 'NAD', 'NGN', 'NIO',
    'NOK', 'NPR', 'NZD', 'OMR', 'PAB', 'PEN', 'PGK', 'PHP', 'PKR', 'PLN', 'PYG', 'QAR', 'RON',
    'RSD', 'RUB', 'RWF', 'SAR', 'SBD', 'SCR', 'SDG', 'SEK', 'SGD', 'SHP', 'SLE', 'SLL', 'SOS',
    'SRD', 'SSP', 'STN', 'SVC', 'SYP', 'SZL', 'THB', 'TJS', 'TMT', 'TND', 'TOP', 'TRY', 'TTD',
    'TWD', 'TZS', 'UAH', 'UGX', 'USD', 'USN', 'UYI', 'UYU', 'UYW', 'UZS', 'VED', 'VES', 'VND',
    'VUV', 'WST', 'XAF', 'XAG', 'XAU', 'XBA', 'XBB', 'XBC', 'XBD', 'XCD', 'XCG', 'XDR', 'XOF',
    'XPD', 'XPF', 'XPT', 'XSU', 'XTS', 'XUA', 'XXX', 'YER', 'ZAR', 'ZMW', 'ZWG', 'ZWL',
})

# ISO 3166-1 alpha-2, all 249 officially assigned codes, plus XK (Kosovo): user-assigned in
# ISO 3166 but what the card networks and most acquirers send for Kosovo.
COUNTRY_CODES: frozenset[str] = frozenset({
    'AD', 'AE', 'AF', 'AG', 'AI', 'AL', 'AM', 'AO', 'AQ', 'AR', 'AS', 'AT', 'AU', 'AW', 'AX', 'AZ',
    'BA', 'BB', 'BD', 'BE', 'BF', 'BG', 'BH', 'BI', 'BJ', 'BL', 'BM', 'BN', 'BO', 'BQ', 'BR', 'BS',
    'BT', 'BV', 'BW', 'BY', 'BZ', 'CA', 'CC', 'CD', 'CF', 'CG', 'CH', 'CI', 'CK', 'CL', 'CM', 'CN',
    'CO', 'CR', 'CU', 'CV', 'CW', 'CX', 'CY', 'CZ', 'DE', 'DJ', 'DK', 'DM', 'DO', 'DZ', 'EC', 'EE',
    'EG', 'EH', 'ER', 'ES', 'ET', 'FI', 'FJ', 'FK', 'FM', 'FO', 'FR', 'GA', 'GB', 'GD', 'GE', 'GF',
    'GG', 'GH', 'GI', 'GL', 'GM', 'GN', 'GP', 'GQ', 'GR', 'GS', 'GT', 'GU', 'GW', 'GY', 'HK', 'HM',
    'HN', 'HR', 'HT', 'HU', 'ID', 'IE', 'IL', 'IM', 'IN', 'IO', 'IQ', 'IR', 'IS', 'IT', 'JE', 'JM',
    'JO', 'JP', 'KE', 'KG', 'KH', 'KI', 'KM', 'KN', 'KP', 'KR', 'KW', 'KY', 'KZ', 'LA', 'LB', 'LC',
    'LI', 'LK', 'LR', 'LS', 'LT', 'LU', 'LV', 'LY', 'MA', 'MC', 'MD', 'ME', 'MF', 'MG', 'MH', 'MK',
    'ML', 'MM', 'MN', 'MO', 'MP', 'MQ', 'MR', 'MS', 'MT', 'MU', 'MV', 'MW', 'MX', 'MY', 'MZ', 'NA',
    'NC', 'NE', 'NF', 'NG', 'NI', 'NL', 'NO', 'NP', 'NR', 'NU', 'NZ', 'OM', 'PA', 'PE', 'PF', 'PG',
    'PH', 'PK', 'PL', 'PM', 'PN', 'PR', 'PS', 'PT', 'PW', 'PY', 'QA', 'RE', 'RO', 'RS', 'RU', 'RW',
    'SA', 'SB', 'SC', 'SD', 'SE', 'SG', 'SH', 'SI', 'SJ', 'SK', 'SL', 'SM', 'SN', 'SO', 'SR', 'SS',
    'ST', 'SV', 'SX', 'SY', 'SZ', 'TC', 'TD', 'TF', 'TG', 'TH', 'TJ', 'TK', 'TL', 'TM', 'TN', 'TO',
    'TR', 'TT', 'TV', 'TW', 'TZ', 'UA', 'UG', 'UM', 'US', 'UY', 'UZ', 'VA', 'VC', 'VE', 'VG', 'VI',
    'VN', 'VU', 'WF', 'WS', 'XK', 'YE', 'YT', 'ZA', 'ZM', 'ZW',
})

# An ISO string event time longer than this is not a date-time; checked before parsing it.
_MAX_ISO_CHARS = 40


def schema_error(message: str, *, field: str | None = None, **context: Any) -> PydanticCustomError:
    """Build the error a riskstream validator raises.

    Parameters
    ----------
    message
        What is wrong, as a producer should read it: ``"unknown ISO 4217 code"``. It must not
        contain ``{`` or ``}`` (pydantic formats it) nor the value of a PII field.
    field
        The field to blame, for checks made by a model validator (which pydantic reports
        without a location). Field validators leave it out.
    **context
        ``got=value`` shows that value instead of the input; ``hide=True`` shows no value.
    """
    ctx: dict[str, Any] = dict(context)
    if field is not None:
        ctx["field"] = field
    return PydanticCustomError(SCHEMA_ERROR, message, ctx)


class WireModel(BaseModel):
    """Base of the input stream models: strict types, unknown fields rejected.

    ``PII_FIELDS`` names the fields whose values never appear in a rejection reason.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    PII_FIELDS: ClassVar[frozenset[str]] = frozenset()


# --- event time ------------------------------------------------------------------------------

def parse_event_time(value: object) -> int:
    """Return an event time from the wire as int milliseconds since the epoch, UTC.

    Parameters
    ----------
    value
        An int (epoch milliseconds) or an ISO-8601 date-time string with a timezone.

    Raises
    ------
    pydantic_core.PydanticCustomError
        For any other type, a float, a bool, or a string without a timezone.

    Examples
    --------
    >>> parse_event_time(1795514400000)
    1795514400000
    >>> parse_event_time("2026-11-24T10:00:00Z")
    1795514400000
    >>> parse_event_time("2026-11-24T11:00:00.250+01:00")
    1795514400250
    """
    # type() rather than isinstance(): bool is an int subclass and is not a time.
    if type(value) is int:
        return value
    if type(value) is str:
        if len(value) > _MAX_ISO_CHARS:
            raise schema_error("not an ISO-8601 date-time, expected e.g. '2026-11-24T10:00:00Z'",
                               hide=True)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise schema_error(
                "not an ISO-8601 date-time, expected e.g. '2026-11-24T10:00:00Z'") from None
        if parsed.tzinfo is None:
            raise schema_error("ISO-8601 date-time without a timezone, add 'Z' or an offset "
                               "such as '+01:00'")
        return (parsed - EPOCH) // _ONE_MS
    raise schema_error(
        "expected epoch milliseconds (integer) or an ISO-8601 date-time string with timezone")


def format_ms(time_ms: int) -> str:
    """Return epoch milliseconds as an ISO-8601 UTC string, for messages.

    Examples
    --------
    >>> format_ms(1795514400000)
    '2026-11-24T10:00:00Z'
    >>> format_ms(1795514400250)
    '2026-11-24T10:00:00.250Z'
    >>> format_ms(10**18)  # out of datetime's range: the number itself
    '1000000000000000000 ms'
    """
    try:
        moment = EPOCH + timedelta(milliseconds=time_ms)
    except OverflowError:
        return f"{time_ms} ms"
    text = moment.isoformat(timespec="milliseconds" if time_ms % 1000 else "seconds")
    return text.removesuffix("+00:00") + "Z"


def utc_date(time_ms: int) -> date | None:
    """Return the UTC calendar date of epoch milliseconds, or None when out of range."""
    try:
        return (EPOCH + timedelta(milliseconds=time_ms)).date()
    except OverflowError:
        return None


def age_years(birth_date: date, on: date) -> int:
    """Return the age in whole years on a day (negative when born after it).

    Examples
    --------
    >>> age_years(date(1990, 6, 15), date(2026, 6, 14))
    35
    >>> age_years(date(1990, 6, 15), date(2026, 6, 15))
    36
    """
    return on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))


EventTimeMs = Annotated[
    int,
    PlainValidator(parse_event_time),
    WithJsonSchema({
        "anyOf": [
            {"type": "integer", "description": "Milliseconds since the epoch, UTC."},
            {"type": "string", "format": "date-time",
             "description": "ISO-8601 with a timezone, e.g. 2026-11-24T10:00:00Z."},
        ],
    }),
]


# --- codes, identifiers, addresses ----------------------------------------------------------

def _check_currency(code: str) -> str:
    if code in CURRENCY_CODES:
        return code
    if code.upper() in CURRENCY_CODES:
        raise schema_error("ISO 4217 codes are upper case")
    raise schema_error("unknown ISO 4217 code")


def _check_country(code: str) -> str:
    if code in COUNTRY_CODES:
        return code
    if code.upper() in COUNTRY_CODES:
        raise schema_error("ISO 3166-1 alpha-2 codes are upper case")
    raise schema_error("unknown ISO 3166-1 alpha-2 country code")


def _check_ip(text: str) -> str:
    # Normalised (IPv6 compressed, lower case) so that one address counts as one. An IPv4
    # address in dotted decimal is checked by the C library first (0.1 us, where ipaddress
    # parses in Python in ~3 us: ~7 % of the gateway): the text it accepts (four decimal
    # octets up to 255, no leading zeros, nothing around) is what ipaddress accepts and
    # writes back (tests/test_schemas_validation.py).
    try:
        socket.inet_pton(socket.AF_INET, text)
        return text
    except (OSError, ValueError):
        pass
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise schema_error("not a valid IPv4 or IPv6 address") from None


Currency = Annotated[
    str,
    AfterValidator(_check_currency),
    Field(description="ISO 4217 alpha-3 currency code, upper case.",
          json_schema_extra={"enum": sorted(CURRENCY_CODES)}),
]
Country = Annotated[
    str,
    AfterValidator(_check_country),
    Field(description="ISO 3166-1 alpha-2 country code, upper case.",
          json_schema_extra={"enum": sorted(COUNTRY_CODES)}),
]
IpAddress = Annotated[
    str,
    AfterValidator(_check_ip),
    Field(description="IPv4 or IPv6 address; normalised at validation (IPv6 compressed).",
          json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
]

EventId = Annotated[
    str,
    Field(min_length=1, max_length=64,
          description="Producer-assigned unique id of the event (1..64 characters); events "
                      "with an id already seen are dropped as duplicates."),
]
# Identifiers and partition keys: non-empty, bounded so one bad producer cannot bloat state.
Id = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(min_length=1, max_length=256)]
