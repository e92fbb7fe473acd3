"""OpenLineage RunEvents of a night: START once the input is known, then COMPLETE or FAIL (openlineage-python).

Input dataset: the day's SKU file. Outputs: the three manifest tables (schema facets from io/records.py
MANIFEST_SCHEMAS, row counts on COMPLETE) and the night's images prefix. Dataset naming follows OpenLineage's
conventions: a local path is namespace `file`, name the absolute path; `s3://bucket/key` is namespace
`s3://bucket`, name `key`. The OpenLineage runId is a UUID derived from the night's run_id (uuid5), so the same
night always maps to the same lineage run.
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated import (
    error_message_run,
    job_type_job,
    nominal_time_run,
    output_statistics_output_dataset,
    schema_dataset,
)
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.transport.transport import Transport

from factory.config import LineageConfig
from factory.io import layout
from factory.io.records import MANIFEST_SCHEMAS

log = logging.getLogger(__name__)

PRODUCER = "urn:adfactory:factory.ops.lineage"  # who made the events (the spec asks for a URI)


def transport(cfg: LineageConfig) -> Transport | None:
    if cfg.transport == "http":
        return HttpTransport(HttpConfig(url=cfg.url, endpoint=cfg.endpoint, timeout=cfg.timeout_s))
    if cfg.transport == "file":
        Path(cfg.file).parent.mkdir(parents=True, exist_ok=True)
        return FileTransport(FileConfig(log_file_path=cfg.file, append=True))
    return None


def dataset_id(location: str) -> tuple[str, str]:
    """(namespace, name) of a local path or a URI, as OpenLineage's naming conventions spell them."""
    if "://" in location:
        parts = urlsplit(location)
        return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")
    return "file", str(Path(location).resolve())


def _join(root: str, relpath: str) -> str:
    return f"{root.rstrip('/')}/{relpath}"


def _schema_facet(schema: pa.Schema) -> schema_dataset.SchemaDatasetFacet:
    fields = [schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in schema]
    return schema_dataset.SchemaDatasetFacet(fields=fields)


class NightLineage:
    """The events of one night. Emission errors are logged: lineage never fails a night."""

    def __init__(self, cfg: LineageConfig, run_id: str, date: str, output_root: str):
        self.cfg, self.date, self.output_root = cfg, date, output_root
        self.run_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"adfactory:{run_id}"))
        t = transport(cfg)
        self.client = OpenLineageClient(transport=t) if t is not None else None
        self.input: str | None = None
        self.started = False

    def _event(self, state: RunState, run_facets: dict, rows: dict[str, int] | None = None) -> RunEvent:
        facets = {**self._nominal(), **run_facets}
        job_type = job_type_job.JobTypeJobFacet(processingType="BATCH", integration="ADFACTORY", jobType="JOB")
        job_facets = {"jobType": job_type}
        inputs = [InputDataset(*dataset_id(self.input))] if self.input else []
        return RunEvent(
            eventType=state,
            eventTime=dt.datetime.now(dt.UTC).isoformat(),
            run=Run(runId=self.run_uuid, facets=facets),
            job=Job(namespace=self.cfg.namespace, name=self.cfg.job_name, facets=job_facets),
            producer=PRODUCER,
            inputs=inputs,
            outputs=self._outputs(rows),
        )

    def _nominal(self) -> dict:
        try:  # the night's date as its nominal start (a bad --date fails the night before it is checked)
            day = dt.datetime.fromisoformat(self.date).replace(tzinfo=dt.UTC)
        except ValueError:
            return {}
        return {"nominalTime": nominal_time_run.NominalTimeRunFacet(nominalStartTime=day.isoformat())}

    def _outputs(self, rows: dict[str, int] | None) -> list[OutputDataset]:
        out = []
        for kind, schema in MANIFEST_SCHEMAS.items():
            stats = {}
            if rows is not None and kind in rows:
                stats["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=rows[kind]
                )
            namespace, name = dataset_id(_join(self.output_root, layout.table_dir(kind)))
            out.append(OutputDataset(namespace, name, facets={"schema": _schema_facet(schema)}, outputFacets=stats))
        namespace, name = dataset_id(_join(self.output_root, f"{self.date}/{layout.IMAGES}"))
        out.append(OutputDataset(namespace, name))
        return out

    def _emit(self, event: RunEvent) -> None:
        if self.client is None:
            return
        try:
            self.client.emit(event)
        except Exception as exc:  # a lineage server being down must not fail the night
            log.warning("lineage: %s event not emitted: %s: %s", event.eventType.value, type(exc).__name__, exc)

    def start(self, input_path: str | None) -> None:
        self.input, self.started = input_path, True
        self._emit(self._event(RunState.START, {}))

    def complete(self, rows: dict[str, int]) -> None:
        """COMPLETE with each manifest table's row count for the night (`rows`: kind -> rows)."""
        self._emit(self._event(RunState.COMPLETE, {}, rows))

    def fail(self, exc: BaseException) -> None:
        if not self.started:  # a night that failed before its input was known still gets its pair of events
            self.start(self.input)
        trace = "".join(traceback.format_exception(exc))
        facet = error_message_run.ErrorMessageRunFacet(
            message=str(exc) or type(exc).__name__, programmingLanguage="python", stackTrace=trace
        )
        self._emit(self._event(RunState.FAIL, {"errorMessage": facet}))
