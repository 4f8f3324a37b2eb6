"""Unit tests of schemas/pii.py and of the PII rule applied by validation."""

from __future__ import annotations

import doctest
import logging

import orjson
import pytest
from factories import encode, make_application, make_transaction
from pydantic import SecretStr

import schemas.pii
from pipelines.settings import PiiSettings, ValidationSettings
from schemas.pii import (
    DEVELOPMENT_KEY,
    MAX_REDACTED_BYTES,
    REDACTED,
    PiiHasher,
    is_valid_ssn,
    mask_name,
    mask_ssn,
    normalise_address,
    normalise_name,
    normalise_ssn,
    redact_raw,
)
from schemas.validation import Rejection, Validator

NOW_MS = 1_795_514_400_000  # 2026-11-24T10:00:00Z
KEY = SecretStr("test-key-0123456789abcdef0123456789")
RAW_PII = {
    "legal_name": "Marguerite Okonkwo-Delacroix",
    "ssn": "078-05-1120",
    "address": "742 Evergreen Terrace, Springfield",
    "birth_date": "1961-03-07",
}
PII_FIELDS = tuple(RAW_PII)
DERIVED_FIELDS = ("ssn_hash", "ssn_masked", "name_hash", "name_masked", "address_hash",
                  "birth_year", "age_years")


def hasher(key: SecretStr | None = KEY) -> PiiHasher:
    return PiiHasher(PiiSettings(hmac_key=key))


@pytest.fixture(scope="module")
def validated() -> dict:
    validator = Validator(ValidationSettings(), PiiSettings(hmac_key=KEY))
    result = validator.validate("applications", encode(make_application(now_ms=NOW_MS, **RAW_PII)),
                                now_ms=NOW_MS)
    assert isinstance(result, dict), result
    return result


# --- the PII rule after validation --------------------------------------------------------

def test_raw_pii_fields_are_replaced_by_derived_ones(validated):
    assert not set(PII_FIELDS) & set(validated)
    assert set(DERIVED_FIELDS) <= set(validated)


def test_no_raw_pii_value_anywhere_in_the_validated_event(validated):
    text = orjson.dumps(validated).decode()
    digits = RAW_PII["ssn"].replace("-", "")
    for needle in (*RAW_PII.values(), digits, digits[:5], "Marguerite", "Okonkwo",
                   "Evergreen", "1961-03-07", "03-07"):
        assert needle not in text, needle
    assert "marguerite" not in text.lower()


def test_derived_values(validated):
    h = hasher()
    assert validated["ssn_hash"] == h.hash_ssn("078051120")
    assert validated["ssn_masked"] == "***-**-1120"
    assert validated["name_hash"] == h.hash_name("marguerite  okonkwo-delacroix")
    assert validated["name_masked"] == "M*** O***"
    assert validated["address_hash"] == h.hash_address("742 evergreen terrace springfield")
    assert validated["birth_year"] == 1961
    assert validated["age_years"] == 65  # on 2026-11-24


def test_missing_address_has_no_hash():
    validator = Validator(ValidationSettings(), PiiSettings(hmac_key=KEY))
    event = make_application(now_ms=NOW_MS, address=None)
    assert validator.validate("applications", encode(event), now_ms=NOW_MS)["address_hash"] is None


def test_only_applications_are_pseudonymised():
    validator = Validator(ValidationSettings(), PiiSettings(hmac_key=KEY))
    result = validator.validate("transactions", encode(make_transaction(now_ms=NOW_MS)),
                                now_ms=NOW_MS)
    assert "ssn_hash" not in result


def test_rejected_application_reasons_hold_no_pii():
    validator = Validator(ValidationSettings(), PiiSettings(hmac_key=KEY))
    bad = [{"ssn": "078-05-112"}, {"ssn": "000-05-1120"}, {"birth_date": "2020-01-01"},
           {"birth_date": "1961-02-30"}, {"legal_name": 42}, {"legal_name": "x" * 300},
           {"address": ""}, {"income": "lots"}]
    for overrides in bad:
        event = make_application(now_ms=NOW_MS, **{**RAW_PII, **overrides})
        result = validator.validate("applications", encode(event), now_ms=NOW_MS)
        assert isinstance(result, Rejection), overrides
        for field in PII_FIELDS:
            value = str(event[field])
            assert not value or value not in result.reason, (overrides, result.reason)


# --- hashing ------------------------------------------------------------------------------

def test_hash_is_stable_for_one_key():
    assert hasher().hash_ssn("078-05-1120") == hasher().hash_ssn("078-05-1120")


def test_hash_differs_for_another_key():
    other = hasher(SecretStr("another-key-0123456789abcdef012345"))
    assert hasher().hash_ssn("078-05-1120") != other.hash_ssn("078-05-1120")
    assert hasher().hash_name("Jane Doe") != other.hash_name("Jane Doe")


def test_hash_is_hmac_sha256_hex_of_the_normalised_digits():
    import hashlib
    import hmac
    expected = hmac.new(KEY.get_secret_value().encode(), b"078051120", hashlib.sha256).hexdigest()
    assert hasher().hash_ssn("078-05-1120") == hasher().hash_ssn("078051120") == expected


def test_name_and_address_hashes_ignore_case_and_spacing():
    h = hasher()
    assert h.hash_name("  JANE   doe ") == h.hash_name("Jane Doe")
    assert h.hash_name("Jane Doe") != h.hash_name("Jane Dough")
    assert h.hash_address("1 Main St., Apt 4") == h.hash_address("1 main st apt 4")


def test_unset_key_uses_the_development_key_and_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(schemas.pii, "_warned_development_key", False)
    with caplog.at_level(logging.WARNING, logger="schemas.pii"):
        first = PiiHasher(PiiSettings(hmac_key=None))
        PiiHasher(PiiSettings(hmac_key=SecretStr("")))
    warnings = [r for r in caplog.records if "RISKSTREAM_PII_HMAC_KEY" in r.getMessage()]
    assert len(warnings) == 1
    assert "UNSAFE FOR PRODUCTION" in warnings[0].getMessage()
    assert first.hash_ssn("078051120") == hasher(SecretStr(DEVELOPMENT_KEY.decode())).hash_ssn(
        "078051120")


def test_a_set_key_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="schemas.pii"):
        hasher()
    assert not caplog.records


# --- masks, normalisation, SSN rules ----------------------------------------------------

def test_masks():
    assert mask_ssn("078-05-1120") == "***-**-1120"
    assert mask_ssn("078051120") == "***-**-1120"
    assert mask_name("John Doe") == "J*** D***"
    assert mask_name("  jean-luc   picard ") == "J*** P***"
    assert mask_name("Al") == mask_name("Alexander") == "A***"  # the length is not told


def test_normalisation():
    assert normalise_name("\tJANE\n doe ") == "jane doe"
    assert normalise_name("STRASSE") == normalise_name("straße")  # casefold, not lower
    assert normalise_address("742 Evergreen Terrace,  Springfield") == \
        "742 evergreen terrace springfield"


@pytest.mark.parametrize("ssn", ["078-05-1120", "078051120", "123-45-6789", "899-99-9999"])
def test_valid_ssns(ssn):
    assert is_valid_ssn(ssn)
    assert normalise_ssn(ssn) == ssn.replace("-", "")


@pytest.mark.parametrize("ssn", [
    "000-12-3456", "666-12-3456", "900-12-3456", "999-12-3456",  # area never issued
    "123-00-4567", "123-45-0000",                                  # group 00, serial 0000
    "123-45-678", "1234567890", "123-456789", "123 45 6789", "abc-de-fghi", "", "١٢٣٤٥٦٧٨٩",
])
def test_invalid_ssns(ssn):
    assert not is_valid_ssn(ssn)
    with pytest.raises(ValueError) as error:
        normalise_ssn(ssn)
    assert ssn not in str(error.value) or not ssn


# --- redact_raw --------------------------------------------------------------------------

def test_redact_raw_parseable_object_redacts_pii_fields_for_any_stream():
    event = make_application(now_ms=NOW_MS, **RAW_PII)
    for stream in ("applications", "transactions"):
        text = redact_raw(stream, encode(event))
        redacted = orjson.loads(text)
        for field in PII_FIELDS:
            assert redacted[field] == "[redacted]"
        assert redacted["applicant_id"] == event["applicant_id"]
        for value in RAW_PII.values():
            assert value not in text


def test_redact_raw_nested_and_misplaced_ssns():
    raw = encode({"event_id": "e1", "meta": {"ssn": "078-05-1120"}, "note": "ssn 078051120",
                  "event_time": NOW_MS})
    text = redact_raw("transactions", raw)
    assert "078-05-1120" not in text and "078051120" not in text
    assert str(NOW_MS) in text  # a 13-digit time is not an SSN


def test_redact_raw_malformed_input():
    raw = b'{"legal_name": "Jane Doe", "ssn": "078-05-1120", "note": "or 078051120", oops'
    text = redact_raw("applications", raw)
    assert "078-05-1120" not in text and "078051120" not in text
    assert "Jane Doe" not in text
    assert '"ssn": "[redacted]"' in text


def test_redact_raw_malformed_input_with_a_cut_off_pii_value():
    text = redact_raw("applications", b'{"event_id": "a1", "address": "742 Evergreen Ter')
    assert "Evergreen" not in text


def test_redact_raw_not_utf8():
    text = redact_raw("applications", b"\xff\xfessn=078-05-1120")
    assert "078-05-1120" not in text
    assert "\ufffd" in text


def test_redact_raw_truncates_to_4_kib():
    raw = b'{"pad": "' + "é".encode() * 20_000 + b'", broken'
    text = redact_raw("transactions", raw)
    assert len(text.encode()) <= MAX_REDACTED_BYTES
    assert text.endswith("bytes]")
    parsed_big = encode({"pad": "x" * 20_000, "ssn": "078-05-1120"})
    text = redact_raw("applications", parsed_big)
    assert len(text.encode()) <= MAX_REDACTED_BYTES
    assert "078-05-1120" not in text


def test_redact_raw_ssn_cut_by_truncation_is_not_left_partly():
    # Redaction runs before the cut, so no SSN survives in part at the 4 KiB boundary.
    raw = b"x" * (MAX_REDACTED_BYTES - 30) + b" 078-05-1120 " + b"y" * 100
    assert "078-05" not in redact_raw("transactions", raw)


def test_redact_raw_of_a_large_message_redacts_what_it_keeps_and_gives_the_whole_size(
        monkeypatch):
    # Only the kept head is searched for SSNs; the marker still gives the whole text's size.
    searched: list[int] = []
    ssn_like = schemas.pii.SSN_LIKE

    class Counting:
        def sub(self, repl, text):
            searched.append(len(text))
            return ssn_like.sub(repl, text)

    monkeypatch.setattr(schemas.pii, "SSN_LIKE", Counting())
    value = {"note": "ref 078051120 and 078-05-1120", "pad": "x" * 100_000,
             "tail": "078-05-1120"}
    raw = encode(value)
    text = redact_raw("transactions", raw)
    assert searched == [2 * MAX_REDACTED_BYTES]  # not the 100 KB
    assert len(text.encode()) <= MAX_REDACTED_BYTES
    assert "078" not in text and text.count(REDACTED) == 2
    assert text.endswith(f"...[truncated, {len(raw)} bytes]")
    # the same for text that is not JSON, and SSNs near the end of what is kept
    raw = b"x" * (MAX_REDACTED_BYTES - 200) + b" 078051120" * 30 + b"y" * 100_000
    text = redact_raw("transactions", raw)
    assert "0780" not in text and REDACTED in text
    assert len(text.encode()) <= MAX_REDACTED_BYTES


def test_docstring_examples():
    assert doctest.testmod(schemas.pii).failed == 0
