"""The import pipeline: Perkville pages → mapping → Perkamo target → checkpoint, one business at a time.

| module | concern |
|---|---|
| `options` | `PipelineConfig`, `RunOptions`, `RunSummary`: what a run is asked and reports |
| `pipeline` | `Pipeline`: the run under its lease, dead-letter retry, delivery of one page |
| `phases` | the order of a backfill's and a sync pass's phases; signposts, checkpoint, cursors |
| `member_phases` | reference data, users, external members, members (identify, id map) |
| `transaction_phases` | the transactions query, its pages mapped in order and delivered with their state |
| `phase_base` | the state the phases share, set by `Pipeline` |
| `late_voids` | balance mode: a void after the cut-over becomes the reversal of the row it voids |
| `pages` | `PageFeed` (the seam page acquisition plugs into), `SequentialFeed`, `prefetch`, `ReadAhead` |
| `records` | `PageRecord` and the pure mapping of raw rows into records |
| `tally` | what a page's records became, from the target's outcomes (pure) |
| `checkpoint` | `BackfillCheckpoint`, and the mode a business was imported in |
"""

from bridge.pipeline.options import (
    IMPORT_KINDS,
    Kind,
    Mode,
    PipelineConfig,
    RunOptions,
    RunSummary,
)
from bridge.pipeline.pages import PageFeed, SequentialFeed, TransactionQuery, prefetch
from bridge.pipeline.pipeline import Pipeline
from bridge.pipeline.records import DefaultCustomerIds, PageRecord, map_transaction_rows

__all__ = [
    "IMPORT_KINDS",
    "DefaultCustomerIds",
    "Kind",
    "Mode",
    "PageFeed",
    "PageRecord",
    "Pipeline",
    "PipelineConfig",
    "RunOptions",
    "RunSummary",
    "SequentialFeed",
    "TransactionQuery",
    "map_transaction_rows",
    "prefetch",
]
