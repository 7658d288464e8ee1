"""FHIR R4 NDJSON to OMOP in DuckDB: resources per second with validation, without, and the
``json.loads`` rate of the same files as the ceiling; peak memory.

    .venv/bin/python bench/bench_fhir.py [--copies 160] [--workers N] [--plain]
        [--skip-no-validate] [--workdir DIR]

Why: issue 9 asks for at least 10,000 resources/s with validation on, on 2 cores, on about
1 GB of bulk-export NDJSON, memory bounded. The input is the Synthea sample
(``../shared/data/fhir-synthea-10``, about 6.4 MB of NDJSON) replicated ``--copies`` times with
new ids (``ehds.connectors.fhir.scaleup.replicate``; 160 copies ≈ 1 GB uncompressed), gzip
compressed as bulk exports usually are (``--plain`` for uncompressed files). It is made once
and kept under ``.bench/fhir/``.

Measured in one run on this machine:

1. the ceiling: one process reading the same files and running ``json.loads`` on every line;
2. the connector with validation (``fhir.resources`` R4B, the default): staging (read,
   validate, map, write Parquet parts, in ``--workers`` processes) and the commit into a
   DuckDB CDM that holds Synthea27Nj's vocabulary (key and concept resolution, id map, write),
   timed apart and together;
3. the same with ``--no-validate`` (the documented fast path).

Rates are resources read (every line, mapped or not) per second of wall time. On a shared
machine wall time depends on the other load, so the staging CPU time (this process and its
workers) is printed too, with the rate it gives when the workers have their CPUs to
themselves (resources x workers / CPU seconds, an upper bound). Peak RSS is
read from ``getrusage``: this process, and the largest of its children (the workers). Figures
are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.process_probes import machine_line, table, verdict

from ehds.connectors.commit import commit_staging
from ehds.connectors.fhir.connector import FhirConnector, default_workers
from ehds.connectors.fhir.reader import open_binary
from ehds.connectors.fhir.scaleup import replicate
from ehds.connectors.staging import StagingArea
from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase
from ehds.omop.schema.layout import CDM_TABLES, RESULTS_TABLES
from ehds.omop.vocabulary import load_vocabulary

REPO: Final = Path(__file__).resolve().parent.parent
SAMPLE: Final = REPO.parent / "shared" / "data" / "fhir-synthea-10"
VOCAB_ZIP: Final = REPO.parent / "shared" / "data" / "synthea27nj-omop54" / "Synthea27Nj_5.4.zip"
CACHE: Final = REPO / ".bench" / "fhir"
TARGET_RATE: Final = 10_000.0
DEFAULT_COPIES: Final = 160


def cpu_seconds() -> float:
    """CPU time of this process and of its ended children (the workers, once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class EtlTiming:
    stage_s: float
    commit_s: float
    written: int
    stage_cpu_s: float

    @property
    def total_s(self) -> float:
        return self.stage_s + self.commit_s


def scaled_export(copies: int, compress: bool) -> tuple[Path, int, int]:
    """The replicated export (made once), its resource count and uncompressed size."""
    folder = CACHE / f"synthea-x{copies}-{'gz' if compress else 'plain'}"
    marker = folder / "_complete.json"
    if not marker.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        replicate(SAMPLE, folder, copies, compress=compress)
        lines = size = 0
        for path in sorted(folder.glob("*.ndjson*")):
            with open_binary(path) as stream:
                for line in stream:
                    lines += 1
                    size += len(line)
        marker.write_text(json.dumps({"resources": lines, "bytes": size}), encoding="utf-8")
        print(f"made {folder} in {time.perf_counter() - started:.1f} s")
    facts = json.loads(marker.read_text(encoding="utf-8"))
    return folder, int(facts["resources"]), int(facts["bytes"])


def vocab_db() -> Path:
    """A DuckDB CDM holding the Synthea27Nj vocabulary (made once); runs use copies."""
    path = CACHE / "synthea-vocab-cdm.duckdb"
    if not path.is_file():
        partial = path.with_suffix(".partial.duckdb")
        partial.unlink(missing_ok=True)
        db = CdmDatabase.parse(str(partial))
        with bulk_writer(db) as writer:
            writer.ensure_tables([*CDM_TABLES, *RESULTS_TABLES])
        load_vocabulary(VOCAB_ZIP, db)
        partial.rename(path)
    return path


def json_ceiling(folder: Path) -> tuple[int, float]:
    """Lines parsed with ``json.loads`` in one process, and the seconds it took."""
    started = time.perf_counter()
    n = 0
    for path in sorted(folder.glob("*.ndjson*")):
        with open_binary(path) as stream:
            for line in stream:
                json.loads(line)
                n += 1
    return n, time.perf_counter() - started


def run_etl(folder: Path, workdir: Path, *, workers: int, validate: bool) -> EtlTiming:
    db_path = workdir / f"cdm-{'valid' if validate else 'fast'}.duckdb"
    shutil.copyfile(vocab_db(), db_path)
    stage_dir = Path(tempfile.mkdtemp(prefix="stage-", dir=workdir))
    connector = FhirConnector([folder], workers=workers, validate=validate)
    try:
        area = StagingArea(stage_dir)
        cpu = cpu_seconds()
        started = time.perf_counter()
        connector.stage(area)
        staged = time.perf_counter()
        stage_cpu = cpu_seconds() - cpu
        report = commit_staging(
            area,
            CdmDatabase.parse(str(db_path)),
            connector=connector.name,
            source=connector.describe(),
            tables=connector.tables,
        )
        committed = time.perf_counter()
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
        db_path.unlink(missing_ok=True)
    written = report.written_total()
    return EtlTiming(staged - started, committed - staged, written, stage_cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--copies", type=int, default=DEFAULT_COPIES, help="replicas of the sample (160 ≈ 1 GB)"
    )
    parser.add_argument("--workers", type=int, default=default_workers(), help="worker processes")
    parser.add_argument("--plain", action="store_true", help="uncompressed NDJSON instead of gzip")
    parser.add_argument(
        "--skip-no-validate", action="store_true", help="skip the --no-validate run"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    if not SAMPLE.is_dir() or not VOCAB_ZIP.is_file():
        print(f"shared data not found ({SAMPLE}, {VOCAB_ZIP})", file=sys.stderr)
        return 1
    CACHE.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    folder, resources, size = scaled_export(args.copies, not args.plain)
    vocab_db()
    print(
        f"input: {resources:,} resources, {size / 1e9:.2f} GB of NDJSON "
        f"({'plain' if args.plain else 'gzip'}, {args.copies} copies of the Synthea sample); "
        f"workers: {args.workers}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-fhir-", dir=args.workdir))
    try:
        parsed, json_s = json_ceiling(folder)
        rows = [
            [
                "json.loads, 1 process (ceiling)",
                f"{parsed / json_s:,.0f}",
                f"{json_s:.1f}",
                "",
                "",
                "",
            ]
        ]
        valid = run_etl(folder, workdir, workers=args.workers, validate=True)
        rows.append(_row("ETL, validation on", resources, valid, args.workers))
        fast = None
        if not args.skip_no_validate:
            fast = run_etl(folder, workdir, workers=args.workers, validate=False)
            rows.append(_row("ETL, --no-validate", resources, fast, args.workers))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    header = [
        "path",
        "resources/s (total)",
        "total s",
        "stage s (res/s)",
        "stage CPU s",
        "commit s",
    ]
    print(table(header, rows))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak RSS: this process {own:,.0f} MiB, largest worker {children:,.0f} MiB")
    rate = resources / valid.total_s
    print(
        f"target: >= {TARGET_RATE:,.0f} resources/s with validation on {args.workers} worker(s): "
        f"{rate:,.0f}/s end to end, {resources / valid.stage_s:,.0f}/s staging "
        f"-> {verdict(rate >= TARGET_RATE)}"
    )
    return 0


def _row(label: str, resources: int, timing: EtlTiming, workers: int) -> list[str]:
    bound = resources * workers / timing.stage_cpu_s
    return [
        label,
        f"{resources / timing.total_s:,.0f}",
        f"{timing.total_s:.1f}",
        f"{timing.stage_s:.1f} ({resources / timing.stage_s:,.0f})",
        f"{timing.stage_cpu_s:.1f} ({bound:,.0f}/s on {workers} idle CPUs)",
        f"{timing.commit_s:.1f}",
    ]


if __name__ == "__main__":
    sys.exit(main())
