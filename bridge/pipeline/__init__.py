"""The import pipeline: Perkville pages → mapping → Perkamo target → checkpoint, one business at a time.

| module | concern |
|---|---|
| `options` | `PipelineConfig`, `RunOptions`, `RunSummary`: what a run is asked and reports |
| `pipeline` | `Pipeline`: the run under its lease, dead-letter retry, delivery of one page |
| `phases` | reference → users → members → transactions; sync passes |
| `late_voids` | balance mode: a void after the cut-over becomes the reversal of the row it voids |
| `pages` | `PageFeed` (the seam page acquisition plugs into), `SequentialFeed`, `prefetch`, `ReadAhead` |
| `records` | `PageRecord` and the pure mapping of raw rows into records |
| `signposts` | where the source's clock stands as a run starts, and the balance-mode cut-over |
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
