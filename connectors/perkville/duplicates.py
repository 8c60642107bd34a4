"""Reading Perkville's answers to a write: "this ``trans_source_id`` is already recorded" in its many shapes.

No I/O here.  The client asks ``duplicate_signal`` about a refused POST and, when that is not
enough, reads the transaction back by ``trans_source_id`` and asks ``read_back_verdict`` about
the rows it got.  What Perkville really answers to a duplicate is unknown (docs/perkville.md,
"Writes"); every shape below is plausible for a Django/Tastypie server:

* HTTP 409;
* an error whose code contains ``duplicate`` (in a field's errors or a code-only ``__all__``);
* text naming the trans source id (``trans_source_id`` or Django's "Trans source id") together
  with duplicate / already / unique / exists, e.g. "Transaction with this Business and Trans source
  id already exists.";
* whatever an extra predicate given to the client says.

Two signals are only a *maybe*, confirmed by the read-back (and trusted when the read-back cannot
tell): a code that only names the field (one containing ``trans_source`` but no duplicate word),
which may as well say the id is malformed; and an answer ``perkbridge probe --write-test``
recorded on this business (``RecordedAnswer``), which may be its answer to other refusals too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from connectors.perkville.guard import trailing_id

DuplicatePredicate = Callable[[int, Any], bool]
"""``(status, decoded body) -> bool``: an extra way to recognise a duplicate answer."""

Signal = Literal["duplicate", "maybe"]
Verdict = Literal["found", "absent", "unknown"]

_DUPLICATE_WORDS = ("duplicate", "already", "unique", "exists")
_PLACEHOLDER = "\x00trans_source_id\x00"


@dataclass(frozen=True)
class RecordedAnswer:
    """What Perkville answered to a repeated ``trans_source_id`` on one business, as recorded.

    ``perkbridge probe --write-test`` POSTs one award twice; the second answer (status and decoded
    JSON body, ``None`` when empty) is that business's own duplicate answer, and ``trans_source_id``
    is the id the probe used.  Handed to ``PerkvilleClient(duplicate_answers=[...])``, it makes an
    answer count as a duplicate when its status is the same and either its body has the same shape
    (the recorded id and the id being written treated as equal) or it carries the same error code.
    A recorded 5xx is never matched: a server error is retried and then read back instead, since a
    generic "please try again later" says nothing about the row.
    """

    status: int
    body: Any = None
    trans_source_id: str | None = None

    def matches(self, status: int, body: Any, trans_source_id: str) -> bool:
        if status != self.status or status >= 500:
            return False
        if _normalised(self.body, self.trans_source_id) == _normalised(body, trans_source_id):
            return True
        recorded = error_codes(self.body)
        return bool(recorded) and recorded == error_codes(body)


def duplicate_signal(
    status: int,
    body: Any,
    *,
    trans_source_id: str,
    recorded: Sequence[RecordedAnswer] = (),
    predicate: DuplicatePredicate | None = None,
) -> Signal | None:
    """``"duplicate"`` when a refused POST's answer says the id is already recorded, ``"maybe"``
    when it only names the ``trans_source_id`` field, else ``None``."""
    if status == 409:
        return "duplicate"
    if predicate is not None and predicate(status, body):
        return "duplicate"
    codes = [code.lower() for code in error_codes(body)]
    if any("duplicate" in code for code in codes):
        return "duplicate"
    text = _words(body)
    if "trans source" in text and any(word in text for word in _DUPLICATE_WORDS):
        return "duplicate"
    if any("trans_source" in code for code in codes) or "trans source" in text:
        return "maybe"
    if any(answer.matches(status, body, trans_source_id) for answer in recorded):
        # The business's own answer, but it may be its answer to other refusals too.
        return "maybe"
    return None


def is_duplicate_answer(status: int, body: Any) -> bool:
    """The built-in rules alone (no recorded answer, no predicate, no read-back): whether an answer
    reads as "already recorded" — what ``perkbridge probe --write-test`` judges its second answer by."""
    return duplicate_signal(status, body, trans_source_id="") == "duplicate"


def is_once_per_day(body: Any) -> bool:
    """Whether a refusal names the once-a-day rule (``limit_to_once_per_calendar_day``)."""
    text = json.dumps(body, default=str).lower() if body is not None else ""
    return "limit_to_once_per_calendar_day" in text or "once_per" in text or "calendar_day" in text


def read_back_verdict(
    rows: Iterable[Any], *, trans_source_id: str, business: object = None
) -> tuple[Verdict, Mapping[str, Any] | None]:
    """What ``GET transactions/?trans_source_id=…`` rows say about our write.

    ``found`` (with the row) only for a row whose ``trans_source_id`` equals ours, of our business
    when the row names one: a server that ignores the filter answers with other rows, which never
    count.  ``absent`` when the server answered no row at all (the filter was honoured and matched
    nothing); ``unknown`` when it answered only other rows (the filter was ignored, so the row may
    be on a page we did not read).
    """
    others = False
    wanted_business = trailing_id(business) if business is not None else None
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        if row.get("trans_source_id") != trans_source_id:
            others = True
            continue
        owner = row.get("business")
        if wanted_business is not None and owner is not None and trailing_id(owner) != wanted_business:
            others = True
            continue
        return "found", row
    return ("unknown" if others else "absent"), None


def error_codes(body: Any) -> list[str]:
    """Every error code in a body: ``code`` values at any depth, a top-level ``error`` string."""
    codes: list[str] = []
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):
        codes.append(str(body["error"]))

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if key == "code" and isinstance(item, str):
                    codes.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body)
    return codes


def _words(body: Any) -> str:
    """Every key and string of a body, lower-cased, underscores as spaces ("trans source id")."""
    if body is None:
        return ""
    text = body if isinstance(body, str) else json.dumps(body, default=str, ensure_ascii=False)
    return text.lower().replace("_", " ")


def _normalised(body: Any, trans_source_id: str | None) -> Any:
    """``body`` with ``trans_source_id`` replaced by a placeholder inside every string."""
    if isinstance(body, str):
        return body.replace(trans_source_id, _PLACEHOLDER) if trans_source_id else body
    if isinstance(body, Mapping):
        return {str(key): _normalised(value, trans_source_id) for key, value in body.items()}
    if isinstance(body, list):
        return [_normalised(value, trans_source_id) for value in body]
    return body
