"""JSON Schema files for producers, generated from the stream models.

The files in ``schemas/jsonschema/`` describe the wire form (raw PII fields present,
``event_time`` as an integer or a date-time string) and are committed, so that producers can
validate before sending. They are generated, never edited: ``riskstream schemas export``
rewrites them, and a test fails while they differ from the models.

JSON Schema cannot say everything the models check: the metric value ranges per metric, the
applicant's age at event time, SSN issuable ranges and label/kind agreement are in the field
descriptions and enforced only at validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .validation import MODEL_OF_STREAM

JSON_SCHEMA_DIR = Path(__file__).parent / "jsonschema"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema_of(stream: str) -> dict[str, Any]:
    """Return the JSON Schema of a stream's wire form.

    Raises
    ------
    KeyError
        For a stream that is not an input stream.
    """
    schema = MODEL_OF_STREAM[stream].model_json_schema(mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def _render(stream: str) -> str:
    # Stable text: same models, same bytes, so the committed files diff cleanly.
    return json.dumps(json_schema_of(stream), indent=2, ensure_ascii=False) + "\n"


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write one ``<stream>.json`` per input stream into a directory, created if needed.

    Parameters
    ----------
    out_dir
        Usually :data:`JSON_SCHEMA_DIR`, the committed copy.

    Returns
    -------
    list of Path
        The files written, in stream order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stream in MODEL_OF_STREAM:
        path = out_dir / f"{stream}.json"
        path.write_text(_render(stream), encoding="utf-8")
        written.append(path)
    return written


def stale_json_schemas(directory: Path = JSON_SCHEMA_DIR) -> list[str]:
    """Return the names of the schema files that are missing or differ from the models.

    Files are compared as JSON, so reformatting alone does not make one stale.

    Parameters
    ----------
    directory
        Where the files are; by default the committed copy.

    Returns
    -------
    list of str
        File names such as ``"transactions.json"``; empty when all are current. Fix with
        ``riskstream schemas export``.
    """
    directory = Path(directory)
    stale = []
    for stream in MODEL_OF_STREAM:
        name = f"{stream}.json"
        try:
            current = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stale.append(name)
            continue
        if current != json.loads(_render(stream)):
            stale.append(name)
    return stale
