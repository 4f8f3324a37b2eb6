"""The ``transactions`` stream: one card payment attempt per event, keyed by ``card_id``."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .common import Country, Currency, EventId, EventTimeMs, Id, IpAddress, WireModel

Channel = Literal["pos", "ecom", "atm", "moto"]
TransactionStatus = Literal["approved", "declined", "failed"]

# Above this an amount is a producer bug (minor units sent as major units, a test value).
MAX_AMOUNT = 1_000_000
MCC_PATTERN = r"^[0-9]{4}$"


class Transaction(WireModel):
    """A card transaction as producers send it (the wire form).

    The validated form is the same fields with ``event_time`` as int milliseconds and ``ip``
    normalised, plus ``"stream": "transactions"``.
    """

    model_config = ConfigDict(
        title="transactions",
        json_schema_extra={
            "description": "A card transaction, one JSON object per Kafka message on the "
                           "'transactions' topic, keyed by card_id. Unknown fields are rejected.",
        },
    )

    event_id: EventId
    event_time: EventTimeMs = Field(
        description="When the transaction happened: epoch milliseconds (UTC) or an ISO-8601 "
                    "date-time with timezone.")
    card_id: Id = Field(description="Card (token, never the PAN); the partition key.")
    account_id: Id = Field(description="Account the card belongs to.")
    merchant_id: Id = Field(description="Merchant (acceptor) id.")
    mcc: str = Field(pattern=MCC_PATTERN, description="Merchant category code, exactly 4 digits.")
    amount: float = Field(gt=0, le=MAX_AMOUNT,
                          description="Amount in major units of `currency` (12.5 = 12.50), "
                                      "> 0 and <= 1,000,000.")
    currency: Currency
    channel: Channel = Field(description="pos: card present; ecom: online; atm: cash "
                                         "withdrawal; moto: mail or telephone order.")
    country: Country = Field(description="Country of the merchant, ISO 3166-1 alpha-2.")
    status: TransactionStatus = Field("approved", description="Authorisation outcome.")
    device_id: Id | None = Field(None, description="Device fingerprint, when known.")
    ip: IpAddress | None = Field(None, description="Client IP address (ecom), when known.")
