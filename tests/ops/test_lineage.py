"""OpenLineage events of a night: START then COMPLETE (or FAIL), received by a local HTTP server or written to a
file, each validated against a JSON Schema of the OpenLineage 2-0-2 RunEvent.

openlineage-python 1.54 ships its spec only as generated classes (no OpenLineage.json in the wheel), so the schema
below restates the spec's required structure and formats; the facets' `_schemaURL`s are checked against the
client's own classes. With $OPENLINEAGE_SPEC naming a copy of the spec's OpenLineage.json, each event is also
validated against it whole.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from openlineage.client.generated import error_message_run, output_statistics_output_dataset, schema_dataset

from factory.config import load_config
from factory.errors import ConfigError, InputError
from factory.io.layout import MANIFEST_KINDS
from factory.io.records import MANIFEST_SCHEMAS
from factory.job.run import run
from tests.conftest import DATE
from tests.ops.conftest import null_night

URI = r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$"
FACET = {"type": "object", "required": ["_producer", "_schemaURL"],
         "properties": {"_producer": {"pattern": URI}, "_schemaURL": {"pattern": URI}}}  # fmt: skip
FACETS = {"type": "object", "additionalProperties": FACET}
DATASET = {"type": "object", "required": ["namespace", "name"], "properties": {
    "namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
    "facets": FACETS, "inputFacets": FACETS, "outputFacets": FACETS}}  # fmt: skip
RUN_EVENT = {
    "type": "object",
    "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"},
        "producer": {"type": "string", "pattern": URI},
        "schemaURL": {"type": "string", "pattern": URI},
        "run": {
            "type": "object",
            "required": ["runId"],
            "properties": {
                "runId": {
                    "type": "string",
                    "pattern": r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                },
                "facets": FACETS,
            },
        },  # fmt: skip
        "job": {
            "type": "object",
            "required": ["namespace", "name"],
            "properties": {
                "namespace": {"type": "string", "minLength": 1},
                "name": {"type": "string", "minLength": 1},
                "facets": FACETS,
            },
        },  # fmt: skip
        "inputs": {"type": "array", "items": DATASET},
        "outputs": {"type": "array", "items": DATASET},
    },
}


def validate(event: dict) -> None:
    jsonschema.validate(event, RUN_EVENT)
    spec = os.environ.get("OPENLINEAGE_SPEC")
    if spec:
        jsonschema.validate(event, json.loads(Path(spec).read_text()))


class Receiver(ThreadingHTTPServer):
    """A lineage endpoint on a free loopback port that keeps what was POSTed to /api/v1/lineage."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.paths: list[str] = []
        events, paths = self.events, self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                paths.append(self.path)
                events.append(json.loads(body))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.shutdown()
    r.server_close()


def test_a_night_sends_start_and_complete_with_its_datasets(receiver, cfg, day_file):
    s = run(null_night(cfg, lineage={"transport": "http", "url": receiver.url}), DATE)
    assert receiver.paths == ["/api/v1/lineage"] * 2
    start, complete = receiver.events
    for event in receiver.events:
        validate(event)
    assert [start["eventType"], complete["eventType"]] == ["START", "COMPLETE"]
    assert (
        start["run"]["runId"]
        == complete["run"]["runId"]
        == str(uuid.uuid5(uuid.NAMESPACE_URL, f"adfactory:{s.run_id}"))
    )
    assert (complete["job"]["namespace"], complete["job"]["name"]) == ("adfactory", "nightly")
    for event in (start, complete):
        assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [("file", str(day_file.resolve()))]
    assert complete["job"]["facets"]["jobType"]["processingType"] == "BATCH"

    out = {o["name"]: o for o in complete["outputs"]}
    root = str(Path(s.output).resolve())
    assert set(out) == {f"{root}/manifests/{k}" for k in MANIFEST_KINDS} | {f"{root}/{DATE}/images"}
    rows = {"approved": s.counts["approved_images"], "review": s.counts["review_images"], "rejected": 4}
    for kind in MANIFEST_KINDS:
        o = out[f"{root}/manifests/{kind}"]
        assert o["namespace"] == "file"
        schema = o["facets"]["schema"]
        assert schema["_schemaURL"] == schema_dataset.SchemaDatasetFacet._get_schema()
        assert [f["name"] for f in schema["fields"]] == MANIFEST_SCHEMAS[kind].names
        stats = o["outputFacets"]["outputStatistics"]
        assert stats["_schemaURL"] == output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet._get_schema()
        assert stats["rowCount"] == rows[kind]
    assert all(not o.get("outputFacets") for o in start["outputs"])  # row counts only once the night is done
    assert start["run"]["facets"]["nominalTime"]["nominalStartTime"].startswith(DATE)


def test_a_failed_night_writes_start_and_fail_to_the_file(cfg, day_file, tmp_path):
    events_file = tmp_path / "lineage" / "events.jsonl"
    c = null_night(cfg, lineage={"transport": "file", "file": str(events_file)})
    with pytest.raises(InputError) as info:
        run(c, "2026-11-22")  # no SKU file for that date
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    for event in events:
        validate(event)
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    assert events[0]["run"]["runId"] == events[1]["run"]["runId"]
    error = events[1]["run"]["facets"]["errorMessage"]
    assert error["_schemaURL"] == error_message_run.ErrorMessageRunFacet._get_schema()
    assert error["message"] == str(info.value) and error["programmingLanguage"] == "python"
    assert "InputError" in error["stackTrace"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[lineage]\ntransport = "kafka"\n', "lineage.transport must be one of none, file, http"),
        ('[lineage]\ntransport = "http"\n', "lineage.url must be an http(s)://host:port URL"),
        ('[lineage]\ntransport = "file"\n', "lineage.file must name the events file"),
    ],
)
def test_bad_lineage_config_is_one_sentence_naming_the_key(tmp_path, toml, message):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=f"^{f}: {message}".replace("(", r"\(").replace(")", r"\)")):
        load_config(f)
