"""The ``applications`` stream: one credit or account application, keyed by ``applicant_id``.

The wire form carries raw PII (``legal_name``, ``ssn``, ``address``, ``birth_date``). The
validated form, the only one on any topic after validation, has them replaced
(:meth:`schemas.pii.PiiHasher.pseudonymise_application`) by ``ssn_hash``, ``ssn_masked``,
``name_hash``, ``name_masked``, ``address_hash`` (or None), ``birth_year`` and ``age_years``.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, model_validator

from .common import (
    EventId,
    EventTimeMs,
    Id,
    IpAddress,
    Text,
    WireModel,
    age_years,
    schema_error,
    utc_date,
)
from .pii import PII_FIELDS, normalise_ssn

Employment = Literal["employed", "self_employed", "unemployed", "retired", "student"]
Product = Literal["credit_card", "personal_loan", "bnpl", "deposit_account"]

MIN_AGE_YEARS = 18
MAX_AGE_YEARS = 120

_DATE_FORMAT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Lower-case host name: labels of letters, digits and inner hyphens, at least two labels.
_DOMAIN = re.compile(r"(?=.{4,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                     r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _check_ssn(ssn: str) -> str:
    try:
        return normalise_ssn(ssn)
    except ValueError as error:
        raise schema_error(str(error)) from None


def _parse_birth_date(value: object) -> object:
    if type(value) is not str:
        return value  # the strict date validator rejects it: "expected a string"
    if not _DATE_FORMAT.fullmatch(value):
        raise schema_error("malformed, expected YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise schema_error("not a calendar date, expected YYYY-MM-DD") from None


def _check_email_domain(domain: str) -> str:
    if "@" in domain:
        raise schema_error("expected the domain only (the part after '@')", hide=True)
    lowered = domain.lower()
    if not _DOMAIN.fullmatch(lowered):
        raise schema_error("not a domain name (internationalised names in their xn-- form)")
    return lowered


class Application(WireModel):
    """An application as producers send it (the wire form, with raw PII).

    ``birth_date`` must give an age of 18..120 years on the UTC date of ``event_time``.
    """

    model_config = ConfigDict(
        title="applications",
        json_schema_extra={
            "description": "A credit or account application, one JSON object per Kafka message "
                           "on the 'applications' topic, keyed by applicant_id. legal_name, "
                           "ssn, address and birth_date are raw PII: validation replaces them "
                           "by keyed hashes and masks, and no later topic, table or log holds "
                           "them. Unknown fields are rejected.",
        },
    )

    PII_FIELDS: ClassVar[frozenset[str]] = PII_FIELDS

    event_id: EventId
    event_time: EventTimeMs = Field(
        description="When the application was submitted: epoch milliseconds (UTC) or an "
                    "ISO-8601 date-time with timezone.")
    applicant_id: Id = Field(description="Applicant; the partition key.")
    legal_name: Text = Field(description="Full legal name. PII: hashed and masked at "
                                         "validation.")
    ssn: Annotated[str, AfterValidator(_check_ssn)] = Field(
        description="US Social Security number, 'NNN-NN-NNNN' or 9 digits; area 000, 666 and "
                    "900-999, group 00 and serial 0000 are invalid. PII: hashed and masked at "
                    "validation.",
        json_schema_extra={"pattern": r"^([0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{9})$"})
    birth_date: Annotated[date, BeforeValidator(_parse_birth_date)] = Field(
        description="Date of birth, YYYY-MM-DD; age 18..120 at event time. PII: reduced to "
                    "birth_year and age_years at validation.")
    address: Text | None = Field(None, description="Postal address. PII: hashed at validation.")
    postal_code: Annotated[str, Field(max_length=16)] | None = Field(
        None, description="Postal code.")
    income: float = Field(ge=0, description="Declared annual income, >= 0.")
    employment: Employment = Field(description="Employment status.")
    employer: Text | None = Field(None, description="Employer name.")
    requested_amount: float = Field(gt=0, description="Requested credit limit or loan amount, "
                                                      "> 0.")
    product: Product = Field(description="Product applied for.")
    device_id: Id | None = Field(None, description="Device fingerprint, when known.")
    ip: IpAddress | None = Field(None, description="Client IP address, when known.")
    email_domain: Annotated[str, AfterValidator(_check_email_domain)] = Field(
        description="Domain of the applicant's e-mail address (not the address), e.g. "
                    "'example.com'; lower-cased at validation.")

    @model_validator(mode="after")
    def _check_age(self) -> Application:
        on = utc_date(self.event_time)
        if on is None:
            return self  # an event time out of any range: rejected as stale or future
        age = age_years(self.birth_date, on)
        if not MIN_AGE_YEARS <= age <= MAX_AGE_YEARS:
            raise schema_error(
                f"age at event time must be {MIN_AGE_YEARS}..{MAX_AGE_YEARS} years",
                field="birth_date")
        return self
