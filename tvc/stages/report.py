"""The report stage: bench records from any number of boards as one HTML page or Markdown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import field_validator

from tvc.errors import ConfigError
from tvc.stages.config import StageConfig, option

SUMMARY = "tables and plots comparing bench records across variants and boards"


class Config(StageConfig):
    records: list[str] = option(..., "", argument=True, nargs=-1)
    output: str | None = option(
        None,
        "report.html (one self-contained page) or report.md [default: report/report.html "
        "beside the first RECORDS file].",
        flag="-o/--output",
    )
    force: bool = option(False, "Replace an existing report at OUTPUT.")
    baseline: str | None = option(
        None, "Variant to compare against (default: the first fp32 variant)."
    )
    title: str | None = option(None, "Report title.")

    @field_validator("records", mode="before")
    @classmethod
    def _files(cls, v: object) -> object:
        if isinstance(v, tuple):  # the command line's RECORDS...
            v = list(v)
        if v == []:
            raise ConfigError("no bench record files given", "pass files from 'tvc bench --json'")
        return v


@dataclass
class Report:
    path: Path
    records: int
    boards: int
    baseline: str
    headline: str | None


def default_report(first_records: str) -> Path:
    """Where a report goes without -o: report/report.html beside its first records file
    (runs/demo/bench/records.json -> runs/demo/bench/report/report.html)."""
    return Path(first_records).parent / "report" / "report.html"


def run(cfg: Config) -> Report:
    """Read every record file, write the report at cfg.output, and say what it compares."""
    from tvc.records import read_records
    from tvc.report.render import analyse, headline, write_report
    from tvc.safe_io import check_output_file, storage_errors

    out = Path(cfg.output) if cfg.output else default_report(cfg.records[0])
    check_output_file(out, "-o", force=cfg.force)
    recs = [r for path in cfg.records for r in read_records(path)]
    with storage_errors(out):
        path = write_report(recs, out, baseline=cfg.baseline, title=cfg.title)
    a = analyse(recs, cfg.baseline)
    return Report(Path(path), len(recs), len(a.boards), a.baseline, headline(a))
