"""Unit tests of schemas/export.py: the committed JSON Schema files match the models."""

from __future__ import annotations

import json

import pytest
from factories import make_application, make_label, make_metric, make_transaction

from schemas.export import (
    JSON_SCHEMA_DIR,
    export_json_schemas,
    json_schema_of,
    stale_json_schemas,
)

STREAMS = ("transactions", "applications", "system-metrics", "labels")
FACTORIES = dict(
    zip(STREAMS, (make_transaction, make_application, make_metric, make_label), strict=True))


def test_committed_json_schemas_are_not_stale():
    stale = stale_json_schemas(JSON_SCHEMA_DIR)
    assert not stale, (
        f"{', '.join(stale)} in {JSON_SCHEMA_DIR} differ from the models in schemas/: "
        f"regenerate them with `riskstream schemas export` (or `python -c 'from schemas.export "
        f"import *; export_json_schemas(JSON_SCHEMA_DIR)'`) and commit the result")


def test_export_writes_one_file_per_stream(tmp_path):
    written = export_json_schemas(tmp_path / "out")
    assert [p.name for p in written] == [f"{s}.json" for s in STREAMS]
    assert stale_json_schemas(tmp_path / "out") == []


def test_export_is_deterministic(tmp_path):
    first = [p.read_bytes() for p in export_json_schemas(tmp_path / "a")]
    second = [p.read_bytes() for p in export_json_schemas(tmp_path / "b")]
    assert first == second


def test_stale_detects_changed_and_missing_files(tmp_path):
    export_json_schemas(tmp_path)
    path = tmp_path / "labels.json"
    schema = json.loads(path.read_text())
    schema["properties"]["label"]["enum"] = [0, 1, 2]
    path.write_text(json.dumps(schema))
    (tmp_path / "system-metrics.json").unlink()
    (tmp_path / "transactions.json").write_text("{not json")
    assert stale_json_schemas(tmp_path) == ["transactions.json", "system-metrics.json",
                                            "labels.json"]


def test_reformatting_alone_is_not_stale(tmp_path):
    export_json_schemas(tmp_path)
    path = tmp_path / "applications.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4, sort_keys=True))
    assert stale_json_schemas(tmp_path) == []


@pytest.mark.parametrize("stream", STREAMS)
def test_schema_describes_the_wire_form(stream):
    schema = json_schema_of(stream)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == stream
    assert schema["description"]
    assert schema["additionalProperties"] is False
    # Every field of a factory event is described, and only those.
    assert set(schema["properties"]) == set(FACTORIES[stream]())
    for name, prop in schema["properties"].items():
        assert prop.get("title") and prop.get("description"), name
    event_time = schema["properties"]["event_time"]
    assert {"type": "integer"}.items() <= event_time["anyOf"][0].items()
    assert event_time["anyOf"][1]["format"] == "date-time"


def test_application_schema_has_the_raw_pii_fields():
    properties = json_schema_of("applications")["properties"]
    for field in ("legal_name", "ssn", "address", "birth_date"):
        assert "PII" in properties[field]["description"]
    assert "ssn_hash" not in properties
