"""PII: keyed hashes, masks, SSN rules and redaction of rejected messages.

Applications carry four raw PII fields (``legal_name``, ``ssn``, ``address``, ``birth_date``).
They exist only on the ``applications`` input topic: validation replaces them with keyed
hashes (HMAC-SHA256), masks and coarse values (:meth:`PiiHasher.pseudonymise_application`),
and a rejected message goes to dead-letter only through :func:`redact_raw`.

A keyed hash lets the models link two applications with the same SSN without anyone being able
to rebuild the SSN from the hash by hashing all 10^9 candidates: that needs the key. Hashes
are only comparable under one key; rotating ``RISKSTREAM_PII_HMAC_KEY`` unlinks all history.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import unicodedata
from typing import Any

import orjson

from pipelines.settings import PiiSettings

from .common import age_years, utc_date

log = logging.getLogger(__name__)

PII_FIELDS: frozenset[str] = frozenset({"legal_name", "ssn", "address", "birth_date"})
REDACTED = "[redacted]"
# What redact_raw keeps of a rejected message.
MAX_REDACTED_BYTES = 4 * 1024

# Public in the source, so hashes made with it protect nothing: development only.
DEVELOPMENT_KEY = b"riskstream-development-key-NOT-FOR-PRODUCTION"
_MIN_KEY_BYTES = 16
_warned_development_key = False

_SSN_FORMAT = re.compile(r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{9}")
# In free text: not part of a longer digit run, so epoch milliseconds and card numbers stay.
SSN_LIKE = re.compile(r"(?<![0-9])[0-9]{3}-?[0-9]{2}-?[0-9]{4}(?![0-9])")
# A PII field's string value in text that is not valid JSON (truncated, a stray quote...).
_PII_IN_TEXT = re.compile(
    r'("(?:legal_name|ssn|address|birth_date)"\s*:\s*)"(?:[^"\\]|\\.)*("|$)', re.DOTALL)
_ADDRESS_PUNCTUATION = str.maketrans({c: " " for c in ",.;:#/"})


# --- SSN -------------------------------------------------------------------------------------

def normalise_ssn(ssn: str) -> str:
    """Return an SSN as its 9 digits, checked against the never-issued ranges.

    Parameters
    ----------
    ssn
        ``"NNN-NN-NNNN"`` or 9 digits.

    Raises
    ------
    ValueError
        ``"malformed, expected NNN-NN-NNNN"`` or ``"not a valid SSN ..."``; the message never
        contains the SSN.

    Examples
    --------
    >>> normalise_ssn("123-45-6789")
    '123456789'
    >>> normalise_ssn("666-12-3456")
    Traceback (most recent call last):
    ...
    ValueError: not a valid SSN: area 000, 666, 9xx, group 00 or serial 0000 is never issued
    """
    if not _SSN_FORMAT.fullmatch(ssn):
        raise ValueError("malformed, expected NNN-NN-NNNN")
    digits = ssn.replace("-", "")
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area == "000" or area == "666" or area[0] == "9" or group == "00" or serial == "0000":
        raise ValueError("not a valid SSN: area 000, 666, 9xx, group 00 or serial 0000 is "
                         "never issued")
    return digits


def is_valid_ssn(ssn: str) -> bool:
    """Return whether an SSN is well formed and in an issuable range.

    Examples
    --------
    >>> is_valid_ssn("123456789"), is_valid_ssn("123-00-6789"), is_valid_ssn("12-345-6789")
    (True, False, False)
    """
    try:
        normalise_ssn(ssn)
    except ValueError:
        return False
    return True


def mask_ssn(ssn: str) -> str:
    """Return the SSN with all but its last four digits masked.

    Examples
    --------
    >>> mask_ssn("123-45-6789")
    '***-**-6789'
    """
    return "***-**-" + ssn.replace("-", "")[-4:]


# --- names and addresses ---------------------------------------------------------------------

def normalise_name(name: str) -> str:
    """Return the form of a name that is hashed: NFKC, casefolded, whitespace collapsed.

    Examples
    --------
    >>> normalise_name("  Jane   DOE ")
    'jane doe'
    """
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def mask_name(name: str) -> str:
    """Return a name as its initials, each followed by three stars.

    The star count is fixed so the mask does not tell the length of a name.

    Examples
    --------
    >>> mask_name("John  Doe")
    'J*** D***'
    >>> mask_name("maría de la cruz")
    'M*** D*** L*** C***'
    """
    return " ".join(part[0].upper() + "***" for part in name.split())


def normalise_address(address: str) -> str:
    """Return the form of an address that is hashed.

    NFKC, casefolded, the punctuation ``, . ; : # /`` read as spaces, whitespace collapsed: so
    ``"1 Main St., Apt 4"`` and ``"1 main st apt 4"`` hash alike. No abbreviation expansion
    (``"Street"`` and ``"St"`` still differ).

    Examples
    --------
    >>> normalise_address("1 Main St.,  Apt #4")
    '1 main st apt 4'
    """
    text = unicodedata.normalize("NFKC", address).casefold().translate(_ADDRESS_PUNCTUATION)
    return " ".join(text.split())


# --- keyed hashing ---------------------------------------------------------------------------

class PiiHasher:
    """Keyed hashes (hex HMAC-SHA256) of SSNs, names and addresses.

    Parameters
    ----------
    settings
        ``hmac_key`` is the key, UTF-8 encoded. When it is unset or empty a fixed development
        key is used and a warning is logged once per process: such hashes are not secret.

    Examples
    --------
    >>> from pydantic import SecretStr
    >>> hasher = PiiHasher(PiiSettings(hmac_key=SecretStr("k" * 32)))
    >>> hasher.hash_ssn("123-45-6789") == hasher.hash_ssn("123456789")
    True
    >>> len(hasher.hash_name("Jane Doe"))
    64
    """

    __slots__ = ("_mac",)

    def __init__(self, settings: PiiSettings) -> None:
        secret = settings.hmac_key.get_secret_value() if settings.hmac_key is not None else ""
        if secret:
            key = secret.encode("utf-8")
            if len(key) < _MIN_KEY_BYTES:
                log.warning("RISKSTREAM_PII_HMAC_KEY is shorter than %d bytes: PII hashes made "
                            "with it can be brute-forced. Set it to at least 32 random bytes.",
                            _MIN_KEY_BYTES)
        else:
            key = DEVELOPMENT_KEY
            _warn_development_key()
        # Keyed once; each hash copies this state instead of re-keying (half the cost).
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def hash_text(self, text: str) -> str:
        """Return the hex HMAC-SHA256 of a string, exactly as given (no normalisation)."""
        mac = self._mac.copy()
        mac.update(text.encode("utf-8"))
        return mac.hexdigest()

    def hash_ssn(self, ssn: str) -> str:
        """Return the hash of an SSN's 9 digits (``"NNN-NN-NNNN"`` or 9 digits accepted)."""
        return self.hash_text(ssn.replace("-", ""))

    def hash_name(self, name: str) -> str:
        """Return the hash of a name after :func:`normalise_name`."""
        return self.hash_text(normalise_name(name))

    def hash_address(self, address: str) -> str:
        """Return the hash of an address after :func:`normalise_address`."""
        return self.hash_text(normalise_address(address))

    def pseudonymise_application(self, event: dict[str, Any]) -> dict[str, Any]:
        """Replace an application's raw PII by hashes, masks and coarse values, in place.

        Parameters
        ----------
        event
            A validated application: ``birth_date`` a ``datetime.date``, ``event_time`` int ms,
            ``ssn`` well formed.

        Returns
        -------
        dict
            The same dict without ``legal_name``, ``ssn``, ``address``, ``birth_date`` and with
            ``ssn_hash``, ``ssn_masked``, ``name_hash``, ``name_masked``, ``address_hash``
            (None without an address), ``birth_year`` and ``age_years`` (at event time).
        """
        ssn = event.pop("ssn")
        name = event.pop("legal_name")
        address = event.pop("address")
        birth_date = event.pop("birth_date")
        event_date = utc_date(event["event_time"])
        event["ssn_hash"] = self.hash_ssn(ssn)
        event["ssn_masked"] = mask_ssn(ssn)
        event["name_hash"] = self.hash_name(name)
        event["name_masked"] = mask_name(name)
        event["address_hash"] = self.hash_address(address) if address is not None else None
        event["birth_year"] = birth_date.year
        event["age_years"] = age_years(birth_date, event_date) if event_date is not None else None
        return event


def _warn_development_key() -> None:
    global _warned_development_key
    if _warned_development_key:
        return
    _warned_development_key = True
    log.warning(
        "RISKSTREAM_PII_HMAC_KEY is not set: SSNs, names and addresses are hashed with a FIXED "
        "DEVELOPMENT KEY that is public in riskstream's source. These hashes can be reversed by "
        "anyone: UNSAFE FOR PRODUCTION. Set RISKSTREAM_PII_HMAC_KEY to a secret of at least 32 "
        "random bytes (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`).")


# --- dead-letter redaction ---------------------------------------------------------------

def redact_raw(stream: str, raw: bytes) -> str:
    """Return the text of a rejected message that may be kept in dead-letter.

    A JSON object has the values of ``legal_name``, ``ssn``, ``address`` and ``birth_date``
    (at any depth, for any stream) replaced by ``"[redacted]"``; anything else has those fields'
    string values and every SSN-looking run of digits (``NNN-NN-NNNN`` or 9 digits not part of
    a longer number) replaced. Either way SSN-looking runs are redacted in the whole text,
    which is then cut to 4 KiB of UTF-8.

    Parameters
    ----------
    stream
        The input stream the message came from (the same rules apply to all of them).
    raw
        The message as received; invalid UTF-8 is decoded with replacement characters.

    Examples
    --------
    >>> redact_raw("applications", b'{"ssn": "123-45-6789", "income": 1}')
    '{"ssn":"[redacted]","income":1}'
    >>> redact_raw("applications", b'{"note": "ssn 123456789", oops')
    '{"note": "ssn [redacted]", oops'
    """
    del stream  # same rules for every stream: a PII field in the wrong stream is still PII
    text: str | None = None
    # Parsing is only worth it for what the size limit lets through; past that, the head.
    if len(raw) <= 1024 * 1024:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            text = orjson.dumps(_redact_value(parsed)).decode("utf-8")
    if text is None:
        head = bytes(raw[: 2 * MAX_REDACTED_BYTES]).decode("utf-8", errors="replace")
        text = _PII_IN_TEXT.sub(lambda m: f'{m.group(1)}"{REDACTED}"', head)
    # Only the first MAX_REDACTED_BYTES of UTF-8 are kept, so the SSN pass reads twice as many
    # characters, not a whole message of up to 1 MiB: a redaction shortens the text by at most
    # one character in eleven, so what is kept lies well inside what was read. (Over all of an
    # oversize message of 70 KB the pass took ~1 ms: one such message cost the gateway as much
    # as ~200 valid events.) The marker gives the size of the text before the cut.
    head = text[: 2 * MAX_REDACTED_BYTES]
    size = len(text.encode("utf-8")) if len(head) < len(text) else None
    return _truncate_utf8(SSN_LIKE.sub(REDACTED, head), MAX_REDACTED_BYTES, size)


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in PII_FIELDS else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    return value


def _truncate_utf8(text: str, max_bytes: int, size: int | None = None) -> str:
    """``text`` cut to ``max_bytes`` of UTF-8 with a marker of its size (``size``: of the
    text it was cut from, which is cut then too)."""
    data = text.encode("utf-8")
    if size is None and len(data) <= max_bytes:
        return text
    marker = f"...[truncated, {size or len(data)} bytes]"
    keep = max_bytes - len(marker)
    return data[:keep].decode("utf-8", errors="ignore") + marker
