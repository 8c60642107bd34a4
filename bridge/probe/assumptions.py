"""The assumptions the pipeline makes about Perkville, judged against what a probe found (pure).

Each row: what perkbridge assumes, ✓ confirmed / ✗ contradicted / ? unknown, and what perkbridge
does about it. ``judge`` reads only the probe's findings, so the table is the same as text and
as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.probe.reach import Reach
from connectors.perkville.schema import ApiSchema

CONFIRMED, CONTRADICTED, UNKNOWN = "confirmed", "contradicted", "unknown"
MARKS = {CONFIRMED: "✓", CONTRADICTED: "✗", UNKNOWN: "?"}

READ_SCOPES = ("ADMIN_CUSTOMER_INFO",)
WRITE_SCOPES = ("ADMIN_CUSTOMER_GRANT_POINTS",)


@dataclass(frozen=True)
class Assumption:
    key: str
    statement: str
    status: str
    action: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "key": self.key,
            "statement": self.statement,
            "status": self.status,
            "action": self.action,
            "detail": self.detail,
        }


def judge(findings: Mapping[str, Any]) -> list[Assumption]:
    """The table, from ``findings`` (``bridge.probe.run.probe``'s report without its table)."""
    schema = ApiSchema.from_json(findings.get("schema"))
    rows = [
        _scopes(
            findings.get("scopes"),
            READ_SCOPES,
            "read_scopes",
            "the token may read customers and points",
            "the import needs them: ask api@perkville.com to grant them to the API client",
        ),
        _scopes(
            findings.get("scopes"),
            WRITE_SCOPES,
            "write_scopes",
            "the token may award points (write-back)",
            "write-back stays off until granted; imports are not affected",
        ),
    ]
    rows.append(_schema_published(schema))
    rows.append(_page_cap(schema, findings.get("paging") or {}))
    rows.append(_total_count(findings.get("paging") or {}))
    rows.extend(_filters(schema))
    rows.append(_writes(schema))
    rows.append(_reach(findings.get("reach")))
    rows.append(_external_members(findings.get("external_members")))
    rows.append(_duplicates(findings.get("write_test")))
    return rows


def blocking(table: Iterable[Assumption]) -> list[Assumption]:
    """Contradicted assumptions that make an import wrong (not merely slower)."""
    return [row for row in table if row.status == CONTRADICTED and row.key in ("read_scopes", "staff_reach")]


# ---------------------------------------------------------------------- the rows
def _scopes(granted: Any, needed: tuple[str, ...], key: str, statement: str, fix: str) -> Assumption:
    if not isinstance(granted, list):
        return Assumption(
            key,
            statement,
            UNKNOWN,
            "the token answer lists no scopes; calls will tell",
            "scopes: " + " ".join(needed),
        )
    missing = [s for s in needed if s not in granted]
    if missing:
        return Assumption(key, statement, CONTRADICTED, fix, "missing: " + " ".join(missing))
    return Assumption(key, statement, CONFIRMED, "none needed", "granted: " + " ".join(sorted(granted)))


def _schema_published(schema: ApiSchema) -> Assumption:
    statement = "the API describes itself (Tastypie /v2/?fullschema=true or {resource}/schema/)"
    if schema.how == "none":
        return Assumption(
            "schema",
            statement,
            UNKNOWN,
            "filters and cursors keep their tolerant defaults; rows are checked on arrival",
        )
    return Assumption(
        "schema",
        statement,
        CONFIRMED,
        "filters, orderings and cursors follow the schema",
        f"read by {schema.how}",
    )


def _page_cap(schema: ApiSchema, paging: Mapping[str, Any]) -> Assumption:
    statement = "a page holds up to 1000 rows (Tastypie's max_limit)"
    caps = {r: s.max_limit for r, s in schema.resources.items() if s is not None and s.max_limit}
    observed = paging.get("limit")
    cap = min(caps.values()) if caps else observed
    if cap is None:
        return Assumption("page_cap", statement, UNKNOWN, "pages are sized by the server's meta.limit")
    if int(cap) == 1000:
        return Assumption("page_cap", statement, CONFIRMED, "page_size 1000", f"max_limit {cap}")
    return Assumption(
        "page_cap",
        statement,
        CONTRADICTED,
        "every later offset uses the server's meta.limit; a backfill needs more requests",
        f"max_limit {cap}",
    )


def _total_count(paging: Mapping[str, Any]) -> Assumption:
    statement = "lists report meta.total_count (needed to read pages in parallel)"
    if "total_count" not in paging:
        return Assumption("total_count", statement, UNKNOWN, "pages are read one at a time")
    if paging.get("total_count") is None:
        return Assumption(
            "total_count", statement, CONTRADICTED, "pages are read one at a time, following meta.next"
        )
    return Assumption("total_count", statement, CONFIRMED, "up to perkville.max_in_flight pages in flight")


_FILTERS = (
    (
        "transactions",
        "last_mod_dt__gte",
        "sync_cursor",
        "transactions can be filtered by last change (last_mod_dt)",
        "sync reads transactions changed since its cursor",
        "sync reads by transaction_dt with the look-back (lookback_days) instead; the filter is not sent",
    ),
    (
        "transactions",
        "transaction_dt__gte",
        "transaction_window",
        "transactions can be filtered by date (transaction_dt)",
        "--since/--until and the look-back are asked of the server",
        "the filter is not sent: rows are filtered here, after reading everything",
    ),
    (
        "transactions",
        "trans_source_id",
        "trans_source_filter",
        "transactions can be found by trans_source_id",
        "an unclear write answer is settled by reading the transaction back",
        "read-back cannot find a transaction: an unclear write answer becomes a dead letter to retry",
    ),
    (
        "users",
        "last_mod_dt__gte",
        "users_cursor",
        "users can be filtered by last change (last_mod_dt)",
        "sync reads users changed since its cursor",
        "the filter is not sent: sync reads every user and keeps the changed ones",
    ),
    (
        "connections",
        "last_mod_dt__gte",
        "connections_cursor",
        "connections can be filtered by last change (last_mod_dt)",
        "sync reads connections changed since its cursor",
        "the filter is not sent: sync reads every connection and keeps the changed ones",
    ),
)


def _writes(schema: ApiSchema) -> Assumption:
    statement = "transactions accept POST (write-back awards and redemptions)"
    transactions = schema.of("transactions")
    if transactions is None or not transactions.list_methods:
        return Assumption(
            "transactions_post", statement, UNKNOWN, "write-back tries, and dead-letters a refusal"
        )
    if "post" in transactions.list_methods:
        return Assumption("transactions_post", statement, CONFIRMED, "write-back can run")
    return Assumption(
        "transactions_post",
        statement,
        CONTRADICTED,
        "keep write-back off: every award would be refused",
        "allowed: " + " ".join(sorted(transactions.list_methods)),
    )


def _filters(schema: ApiSchema) -> list[Assumption]:
    out = []
    for resource, param, key, statement, yes, no in _FILTERS:
        allowed = schema.allows_filter(resource, param)
        if allowed is None:
            out.append(
                Assumption(
                    key, statement, UNKNOWN, yes + "; rows that break the filter are dropped with a warning"
                )
            )
        elif allowed:
            out.append(Assumption(key, statement, CONFIRMED, yes))
        else:
            out.append(
                Assumption(
                    key, statement, CONTRADICTED, no, f"{resource}: {param} not in the schema's filtering"
                )
            )
    return out


def _reach(raw: Any) -> Assumption:
    statement = "the staff account sees every location's customers"
    if not isinstance(raw, Mapping):
        return Assumption("staff_reach", statement, UNKNOWN, "not checked")
    reach = Reach.from_json(raw)
    if reach.full is False:
        return Assumption(
            "staff_reach",
            statement,
            CONTRADICTED,
            "backfill refuses (exit 1) unless --allow-partial; use a staff account with access "
            "to all locations",
            reach.note,
        )
    if reach.full is None:
        return Assumption("staff_reach", statement, UNKNOWN, "backfill goes ahead", reach.note)
    return Assumption("staff_reach", statement, CONFIRMED, "none needed", reach.note)


def _external_members(raw: Any) -> Assumption:
    statement = "the External Member API is available (membership traits, write-back of members)"
    if raw is None:
        return Assumption("external_members", statement, UNKNOWN, "not checked")
    if raw:
        return Assumption("external_members", statement, CONFIRMED, "membership traits are imported")
    return Assumption(
        "external_members",
        statement,
        CONTRADICTED,
        "membership traits and external-member write-back are skipped",
    )


def _duplicates(raw: Any) -> Assumption:
    statement = "a repeated trans_source_id is answered as a duplicate (idempotent write-back)"
    if not isinstance(raw, Mapping):
        return Assumption(
            "duplicate_answer",
            statement,
            UNKNOWN,
            "known duplicate shapes and a read-back decide; run probe --write-test --perk ID to record it",
        )
    first, second = raw.get("first") or {}, raw.get("second") or {}
    rows = raw.get("rows_with_id")
    if first.get("status") != "2xx":
        return Assumption(
            "duplicate_answer",
            statement,
            UNKNOWN,
            "the test award itself failed: fix the perk or customer and run the write test again",
            f"first answer: HTTP {first.get('status')} {_code(first.get('body'))}".rstrip(),
        )
    if rows is not None and rows > 1:
        return Assumption(
            "duplicate_answer",
            statement,
            CONTRADICTED,
            "Perkville awarded twice: write-back must not retry a write without a read-back first",
            f"{rows} transactions carry {raw.get('trans_source_id')}",
        )
    if raw.get("duplicate_recognised") or (second.get("status") == "2xx" and rows == 1):
        return Assumption(
            "duplicate_answer",
            statement,
            CONFIRMED,
            "the recorded answer counts as a duplicate",
            f"second answer: HTTP {second.get('status')} {_code(second.get('body'))}".rstrip(),
        )
    return Assumption(
        "duplicate_answer",
        statement,
        UNKNOWN,
        "the second answer is recorded; write-back reads the transaction back before failing",
        f"second answer: HTTP {second.get('status')} {_code(second.get('body'))}".rstrip(),
    )


def _code(body: Any) -> str:
    """The first error code of an error body (Perkville's ``errors`` map), else ''."""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if isinstance(errors, Mapping):
        for items in errors.values():
            for item in items if isinstance(items, list) else [items]:
                if isinstance(item, Mapping) and item.get("code"):
                    return str(item["code"])
    return ""
