"""The bench record schema now lives on the floor, in tvc/records.py (runtime writes records,
report reads them); this name stays for the code and scripts that import it from here."""

from tvc.records import (  # noqa: F401
    SCHEMA,
    Accuracy,
    BenchRecord,
    Detection,
    Energy,
    Latency,
    ModelRef,
    Quality,
    read_records,
    write_records,
)
