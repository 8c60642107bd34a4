"""``perkbridge probe``: what a business's Perkville API supports, checked at run time.

| module | holds |
|---|---|
| `run` | the probe itself (requests; read-only unless a write test names a perk) |
| `reach` | whether the staff account sees every location's customers (pure) |
| `assumptions` | the pipeline's assumptions judged against the findings (pure) |
"""

from bridge.probe.assumptions import CONFIRMED, CONTRADICTED, MARKS, UNKNOWN, Assumption, blocking, judge
from bridge.probe.reach import Reach, assess, referenced_locations
from bridge.probe.run import PROBE_PREFIX, ProbeReport, WriteTest, probe, recorded_duplicate_answer

__all__ = [
    "CONFIRMED",
    "CONTRADICTED",
    "MARKS",
    "PROBE_PREFIX",
    "UNKNOWN",
    "Assumption",
    "ProbeReport",
    "Reach",
    "WriteTest",
    "assess",
    "blocking",
    "judge",
    "probe",
    "recorded_duplicate_answer",
    "referenced_locations",
]
