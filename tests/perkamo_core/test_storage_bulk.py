"""storage.bulk writes datetimes as the driver stores them: the same value SQLAlchemy's column
types (``UTCDateTime`` and the dialect's own processor) would bind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st_
from sqlalchemy import Dialect
from sqlalchemy.dialects import postgresql, sqlite

from perkamo_core.storage.bulk import BulkStore
from perkamo_core.storage.columns import UTCDateTime

_zones = st_.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=13, minutes=45))])
_aware = st_.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 1, 1), timezones=_zones)


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "postgresql"])
@given(value=_aware)
def test_dbdt__binds_what_the_column_type_binds(dialect: Dialect, value: datetime) -> None:
    bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    fast = BulkStore(dialect.name).dbdt(value)
    assert fast == bind(value)
    assert type(fast) is type(bind(value))
