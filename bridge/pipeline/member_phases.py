"""The member phases of an import run: reference data (businesses, locations, perks), users,
external members, and the connections that make each member a Perkamo customer (identify calls
and the id map, committed page by page).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from bridge.errors import SourceError
from bridge.pipeline.options import Mode
from bridge.pipeline.pages import close_quietly, prefetch
from bridge.pipeline.phase_base import PhaseBase, WriteState
from bridge.pipeline.records import ExternalMembers, PageRecord, map_connections
from bridge.pipeline.tally import PageTally
from bridge.source_clock import newest, to_stamp
from bridge.sources import Page
from mapping.records import parse_location


class MemberPhases(PhaseBase):
    """Reference data, users and members (see the module docstring)."""

    def _open_reference(self) -> None:
        """Start reading the three reference lists at once (they wait on the network, not on
        each other); ``_phase_reference`` takes them in order."""
        self._ahead.open("businesses", self.source.iter_businesses())
        self._ahead.open("locations", self.source.iter_locations(self.business))
        self._ahead.open("perks", self.source.iter_perks(self.business))

    def _users_pages(self, since: datetime | None) -> Iterator[Page]:
        return self.source.iter_users(business=self.business, last_mod_dt_gte=since)

    def _external_member_pages(self) -> Iterator[Page]:
        return self.source.iter_external_members(self.business)

    def _connection_pages(self, since: datetime | None) -> Iterator[Page]:
        return self.source.iter_connections(self.business, last_mod_dt_gte=since)

    def _ahead_or(self, name: str, opener: Callable[[], Iterable[Page]]) -> prefetch[Page]:
        """The list read ahead under ``name``, else a prefetch of ``opener()`` opened now."""
        return self._ahead.take(name) or prefetch(opener())

    def _phase_reference(self) -> None:
        self.progress.phase("reference")
        if "businesses" not in self._ahead:
            self._open_reference()  # a sync: opened here, still all three at once
        found = False
        with closing(self._ahead_or("businesses", self.source.iter_businesses)) as pages:
            for page in pages:
                for raw in page.objects:
                    bid = raw.get("business_id", raw.get("id"))
                    if bid is not None and str(bid) == str(self.business):
                        found = True
                self.progress.advance("reference", len(page.objects))
        if not found:
            raise SourceError(
                f"business {self.business} is not visible to this Perkville account; check "
                "PERKVILLE_BUSINESS_ID (or --business) and the account's staff access"
            )
        perks = 0
        with closing(self._ahead_or("locations", lambda: self.source.iter_locations(self.business))) as pages:
            for page in pages:
                for raw in page.objects:
                    parsed = parse_location(raw, timezone=self.config.timezone)
                    if parsed.record is not None:
                        self._locations[parsed.record.location_id] = parsed.record
                self.progress.advance("reference", len(page.objects))
        with closing(self._ahead_or("perks", lambda: self.source.iter_perks(self.business))) as pages:
            for page in pages:
                perks += len(page.objects)
                self.progress.advance("reference", len(page.objects))
        self.progress.done("reference", f"{len(self._locations)} locations, {perks} perks")

    def _phase_users(self, since: datetime | None) -> set[str]:
        """Stage users (raw) for the connections phase; returns the ids seen."""
        self.progress.phase("users")
        seen: set[str] = set()
        # The next page is requested while this one is staged (``prefetch``).
        pages = self._ahead_or("users", lambda: self._users_pages(since))
        try:
            self._stage_users(pages, seen)
        finally:
            close_quietly(pages)
        self.progress.done("users", f"{len(seen)} users")
        return seen

    def _stage_users(self, pages: Iterable[Page], seen: set[str]) -> None:
        for page in pages:
            batch: dict[str, Mapping[str, Any]] = {}
            for raw in page.objects:
                uid = raw.get("user_id")
                if uid is None:
                    continue
                batch[str(uid)] = raw
            self._note_read("users", page.objects)
            if batch:
                with self.state.engine.begin() as conn:
                    self.state.users.put(conn, self.business, batch)
            seen.update(batch)
            self.progress.advance("users", len(page.objects), total=page.meta.get("total_count"))
            if self.stop.is_set():
                break

    def _load_external_members(self) -> None:
        """External member records, kept for the members phase (empty without the External
        Member API: the connector then warns once and yields nothing)."""
        pages = self._ahead_or("external-members", self._external_member_pages)
        try:
            self._members = ExternalMembers(raw for page in pages for raw in page.objects)
        finally:
            close_quietly(pages)

    def _phase_connections(
        self,
        since: datetime | None,
        *,
        mode: Mode,
        cutover: datetime | None,
        pages: Iterator[Page] | None = None,
    ) -> set[str]:
        """Identify every connected member; returns the Perkville user ids handled.

        Only the phase's own read (``pages`` None) counts towards the connections cursor.
        """
        self.progress.phase("members")
        handled: set[str] = set()
        tracked = pages is None
        if pages is None:
            # The next page is requested while this one is mapped and delivered.
            pages = self._ahead_or("connections", lambda: self._connection_pages(since))
        try:
            for page in pages:
                if tracked:
                    self._note_read("connections", page.objects)
                records = self._map_connections(page.objects, mode=mode, cutover=cutover)
                handled.update(r.entry.perkville_user_id for r in records if r.entry is not None)
                self._deliver(records, "connection", self._connection_state())
                self.progress.advance(
                    "members", len(page.objects), total=page.meta.get("total_count"), counts=self._counts
                )
                if self.stop.is_set():
                    return handled
        finally:
            close_quietly(pages)
        self.progress.done("members", f"{len(handled)} members")
        return handled

    def _map_connections(
        self, rows: Sequence[Mapping[str, Any]], *, mode: Mode, cutover: datetime | None
    ) -> list[PageRecord]:
        return map_connections(
            rows,
            config=self.config,
            users_of=lambda ids: self.state.users.get_many(self.business, ids),
            known_of=lambda ids: self.state.id_map.get_many(self.business, ids),
            members=self._members,
            locations=self._locations,
            mode=mode,
            cutover=cutover,
            unknown_levels=getattr(self, "_unknown_levels", None),
        )

    def _connection_state(self) -> WriteState:
        """The id-map rows of a members page (only of the records that went through)."""

        def write(conn: Connection, page: PageTally) -> None:
            entries = [r.entry for r in page.delivered if r.entry is not None]
            if entries:
                self.state.id_map.put(conn, entries)

        return write

    def _note_read(self, resource: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Keep the newest ``last_mod_dt`` read of ``resource`` (its cursor's candidate)."""
        tz = self.config.timezone
        found = newest([to_stamp(row.get("last_mod_dt"), tz) for row in rows])
        before = self._read_newest.get(resource)
        if found is not None and (before is None or found > before):
            self._read_newest[resource] = found
