"""The comparison behind every report: rows in a stable order, each against its baseline.

Records from any number of machines merge into one comparison. Each row is one variant on one
backend at one batch size on one board, compared with the baseline variant measured on the same
board at the same batch (on the same backend where it was measured there): speed-up in p50
latency with its 95% interval, size, and the change in quality (top-1 of classifiers, COCO mAP of
detectors), each only against the same metric on the same evaluation set.

Rows come in lineage order: the least derived model first (the teacher), then each derived
model in the order its records first appear, its precisions from fp32 down to int8. Variants are
named as the user named them: where records of different artifacts share one label (old records
label every variant of one architecture alike), the artifact's directory name replaces the
architecture. No torch.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from tvc.errors import ConfigError
from tvc.records import BenchRecord
from tvc.runtime.compare import speedup

PRECISION_ORDER = ("fp32", "fp16", "mixed", "int8-dynamic", "int8-qdq")
PAYLOAD_SUFFIXES = (".onnx", ".engine", ".plan", ".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Row:
    """One record with its comparison against the baseline."""

    n: int  # 1-based number of the record in lineage order; its provenance entry is #rec-<n>
    rec: BenchRecord
    speedup: float | None  # baseline p50 / this p50, same board and batch
    size_ratio: float | None  # baseline size / this size
    d_quality: float | None  # change of the record's quality metric (top-1 or mAP), in points
    is_baseline: bool  # the baseline variant on the baseline's backend
    base_n: int | None = None  # the row this one was compared with
    speedup_ci: tuple[float, float] | None = None  # conservative 95% interval of the speed-up
    together: bool | None = None  # timed interleaved with its baseline (None: not recorded)

    @property
    def noisy(self) -> list[str]:
        """Why this record's latency may not repeat; empty when it is trusted or unknown."""
        c = self.rec.conditions
        return list(c.reasons or ["marked noisy"]) if c is not None and c.noisy else []

    @property
    def overlaps(self) -> bool:
        """The speed-up's interval contains 1: no measurable difference from the baseline."""
        return self.speedup_ci is not None and self.speedup_ci[0] <= 1.0 <= self.speedup_ci[1]


@dataclass
class Analysis:
    records: list[BenchRecord]  # in lineage order, renamed where labels collided
    baseline: str
    boards: list[str]
    variants: list[str]  # in lineage order
    rows: list[Row]  # in the records' order; row.n is the position + 1
    renamed: dict[str, str] = field(default_factory=dict)  # new name -> label in the records

    def rows_for(self, board: str) -> list[Row]:
        return [r for r in self.rows if r.rec.board == board]

    def row(self, n: int) -> Row:
        return self.rows[n - 1]


def _unique(items) -> list:
    return list(dict.fromkeys(items))


# ------------------------------------------------------------------------- names and order


def _model_dir(rec: BenchRecord) -> str | None:
    """The name of the directory the user gave the model ('student-onnx'), from its path."""
    if not rec.model.path:
        return None
    p = Path(rec.model.path.rstrip("/"))
    if p.suffix.lower() in PAYLOAD_SUFFIXES:
        p = p.parent
    return p.name or None


def _model_key(rec: BenchRecord) -> str:
    """What tells two models apart: the artifact, else the path, else the architecture."""
    return rec.model.artifact_id or _model_dir(rec) or rec.model.name


def user_names(records: list[BenchRecord]) -> dict[int, str]:
    """record index -> display name. Where one label is shared by different models (old records
    name every variant by its architecture), every record labelled by its architecture is named
    by its directory instead ('student-onnx int8-qdq'), so that all names are of one kind."""
    groups: dict[tuple, set[str]] = {}
    for r in records:
        groups.setdefault((r.variant, r.precision), set()).add(_model_key(r))
    if all(len(keys) < 2 for keys in groups.values()):
        return {}
    out = {}
    for i, r in enumerate(records):
        if _model_dir(r) and r.variant.startswith(f"{r.model.name} "):
            out[i] = f"{_model_dir(r)} {r.variant.removeprefix(f'{r.model.name} ')}"
    # keep the old labels unless the new names really tell the models apart
    by_name: dict[tuple, set[str]] = {}
    for i, r in enumerate(records):
        by_name.setdefault((out.get(i, r.variant), r.precision), set()).add(_model_key(r))
    return out if all(len(keys) == 1 for keys in by_name.values()) else {}


def _model_depth(rec: BenchRecord) -> int:
    """How many models deep the record's model is (the teacher 1, a student from it 2);
    exports (onnx, engine) do not count: they are the same model."""
    models = [e for e in rec.model.lineage if e.get("kind") == "model"]
    return len(models) if rec.model.lineage else 0


def _model_root(rec: BenchRecord) -> str:
    """The id of the last model in the lineage: every export of one model shares it."""
    models = [e.get("id") for e in rec.model.lineage if e.get("kind") == "model"]
    return str(models[-1]) if models else _model_key(rec)


def _precision_rank(precision: str) -> int:
    return (
        PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)
    )


def lineage_order(records: list[BenchRecord]) -> list[str]:
    """Variant names in lineage order: shallow models first (a variant takes its shallowest
    record's depth), each model's variants together, fp32 before int8; ties by first
    appearance."""
    variants = _unique(r.variant for r in records)
    depth = {v: min(_model_depth(r) for r in records if r.variant == v) for v in variants}
    roots = _unique(_model_root(r) for r in records)
    root_of = {v: next(_model_root(r) for r in records if r.variant == v) for v in variants}
    prec = {v: next(r.precision for r in records if r.variant == v) for v in variants}

    def key(v: str) -> tuple:
        root_depth = min(depth[w] for w in variants if root_of[w] == root_of[v])
        return (root_depth, roots.index(root_of[v]), _precision_rank(prec[v]), variants.index(v))

    return sorted(variants, key=key)


def backend_label(rec: BenchRecord) -> str:
    """'ort CPU, 2 thr' / 'trt' / 'torch, 4 thr'."""
    label = rec.backend
    provider = rec.provider.replace("ExecutionProvider", "")
    if rec.backend == "ort" and provider:
        label += f" {provider}"
    if rec.threads:
        label += f", {rec.threads} thr"
    return label


# ------------------------------------------------------------------------------ comparisons


def choose_baseline(records: list[BenchRecord], baseline: str | None,
                    renamed: dict[str, str] | None = None) -> str:  # fmt: skip
    """The baseline variant: the one named, else the first FP32 variant in lineage order (the
    teacher), else the first."""
    variants = lineage_order(records)
    if baseline is None:
        fp32 = {r.variant for r in records if r.precision == "fp32"}
        return next((v for v in variants if v in fp32), variants[0])
    if baseline in variants:
        return baseline
    old = [new for new, label in (renamed or {}).items() if label == baseline]
    if len(old) == 1:
        return old[0]
    close = difflib.get_close_matches(baseline, variants, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"--baseline '{baseline}' is not a variant in these records",
        f"{hint}variants: {', '.join(variants)}",
    )


def baseline_for(rec: BenchRecord, pool: list[BenchRecord]) -> BenchRecord | None:
    """The baseline record to compare `rec` with: same board and batch, same backend if any."""
    same = [b for b in pool if b.board == rec.board and b.batch == rec.batch]
    for match in (
        lambda b: b.backend == rec.backend and b.provider == rec.provider,
        lambda b: b.backend == rec.backend,
        lambda b: True,
    ):
        found = [b for b in same if match(b)]
        if found:
            return found[0]
    return None


def _quality_change(rec: BenchRecord, pool: list[BenchRecord]) -> float | None:
    """`rec`'s quality minus the baseline's, in points: the same metric on the same data, from
    the same board where there is one."""
    q = rec.quality
    if q is None:
        return None
    same = [b for b in pool if b.quality and (b.quality.name, b.quality.data) == (q.name, q.data)]
    base = next((b for b in same if b.board == rec.board), same[0] if same else None)
    return q.value - base.quality.value if base else None


def ratio_interval(base: BenchRecord, rec: BenchRecord) -> tuple[float, float] | None:
    """The speed-up's interval from the two medians' 95% intervals, taken conservatively
    (tvc.runtime.compare, what `tvc bench` prints)."""
    s = speedup(base.latency_ms, rec.latency_ms)
    return None if s.low is None or s.high is None else (s.low, s.high)


def _together(base: BenchRecord, rec: BenchRecord) -> bool | None:
    ids = [x.conditions.run_id if x.conditions else None for x in (base, rec)]
    return None if None in ids else ids[0] == ids[1]


def analyse(records: list[BenchRecord], baseline: str | None = None) -> Analysis:
    if not records:
        raise ConfigError("no bench records to report", "pass files written by 'tvc bench --json'")
    names = user_names(records)
    renamed = {names[i]: records[i].variant for i in names}
    records = [
        r.model_copy(update={"variant": names[i]}) if i in names else r
        for i, r in enumerate(records)
    ]
    base = choose_baseline(records, baseline, renamed)
    # on each board the baseline is its first backend measured there (the others are compared
    # with it, and are not marked as the baseline)
    home: dict[str, tuple[str, str]] = {}
    for r in records:
        if r.variant == base:
            home.setdefault(r.board, (r.backend, r.provider))
    variants = lineage_order(records)
    boards = _unique(r.board for r in records)
    records = sorted(
        records,
        key=lambda r: (boards.index(r.board), variants.index(r.variant), r.batch,
                       backend_label(r)),
    )  # fmt: skip
    pool = [r for r in records if r.variant == base]
    homes = [r for r in pool if (r.backend, r.provider) == home[r.board]]
    rows = []
    for n, rec in enumerate(records, 1):
        is_base = rec.variant == base and (rec.backend, rec.provider) == home[rec.board]
        # the baseline's own rows on other backends are compared with its home backend
        b = baseline_for(rec, homes if rec.variant == base else pool)
        # an engine's size depends on the board: prefer the baseline's size on the same board
        sizes = [x.size_bytes for x in pool if x.size_bytes and x.board == rec.board]
        sizes = sizes or [x.size_bytes for x in pool if x.size_bytes]
        rows.append(
            Row(
                n=n,
                rec=rec,
                speedup=b.latency_ms.p50 / rec.latency_ms.p50 if b else None,
                size_ratio=sizes[0] / rec.size_bytes if sizes and rec.size_bytes else None,
                d_quality=_quality_change(rec, pool),
                is_baseline=is_base,
                base_n=records.index(b) + 1 if b else None,
                speedup_ci=ratio_interval(b, rec) if b and b is not rec else None,
                together=_together(b, rec) if b and b is not rec else None,
            )
        )
    return Analysis(records, base, boards, variants, rows, renamed)


def evaluation_sets(analysis: Analysis) -> dict[str, list[tuple[str, tuple[str, str, int]]]]:
    """metric -> [(variant, (dataset, split, n))], one entry per variant and set."""
    out: dict[str, list] = {}
    for r in analysis.rows:
        q = r.rec.quality
        if q and (r.rec.variant, q.data) not in out.setdefault(q.name, []):
            out[q.name].append((r.rec.variant, q.data))
    return out


def set_text(data: tuple[str, str, int]) -> str:
    """('fashion-mnist', 'test', 10000) -> 'fashion-mnist test, n=10,000'."""
    dataset, split, n = data
    return f"{dataset} {split}, n={n:,}"
