"""How the sandbox answers writes: Tastypie's empty 201/202, the duplicate-``trans_source_id`` variants,
and awards that name the customer by ``external_member_id``.

Tastypie answers a POST to a list with **201, a ``Location`` header and an empty body**, and a
PATCH of a detail with **202 and an empty body**, unless the resource sets
``always_return_data`` (fidelity study T5); ``Behaviour.return_data`` is that switch.

What Perkville answers to a repeated ``trans_source_id`` is unknown, so ``Behaviour.duplicate_answer``
picks one of the plausible shapes (the codes are the sandbox's inventions, marked so in
docs/perkville.md; nothing may key logic on them):

``field``         400 ``{"error_type": "validation_error", "errors": {"trans_source_id": [{"code":
                  "pv_duplicate_trans_source_id", …}]}}`` (the sandbox's original answer, the default)
``conflict``      409 with a code-only body
``code``          400 ``{"errors": {"__all__": [{"code": "pv_txn_duplicate_trans_source_id"}]}}``
``django``        400 with Django's unique-together wording, "Transaction with this Business and
                  Trans source id already exists."
``server_error``  500 ``{"error_message": "Sorry, this request could not be processed. Please try
                  again later."}`` (Tastypie's canned answer to an ``IntegrityError``)
``silent``        201 as if created, naming the existing row (its ``Location``; its body with
                  ``return_data``)
``opaque``        400 with a code and words no rule recognises (``pv_txn_rejected``, "This
                  transaction cannot be accepted."): only a read-back, or the answer
                  ``perkbridge probe --write-test`` recorded, tells it is a duplicate
"""

from __future__ import annotations

from typing import Any

from connectors.perkville.sandbox.state import Ledger, SandboxError, Txn

DUPLICATE_ANSWERS = ("field", "conflict", "code", "django", "server_error", "silent", "opaque")
TASTYPIE_CANNED_ERROR = "Sorry, this request could not be processed. Please try again later."
DJANGO_UNIQUE_MESSAGE = "Transaction with this Business and Trans source id already exists."

Reply = tuple[int, Any, dict[str, str]]
"""``(status, JSON payload or None for an empty body, headers)``."""


def check_duplicate_answer(value: str) -> None:
    if value not in DUPLICATE_ANSWERS:
        raise ValueError(f"duplicate_answer must be one of {', '.join(DUPLICATE_ANSWERS)}, not {value!r}")


def existing_row(ledger: Ledger, business: int, trans_source_id: object) -> Txn | None:
    """The row of ``business`` that already holds ``trans_source_id`` (call under ``ledger.lock``)."""
    if not isinstance(trans_source_id, str) or trans_source_id not in ledger.source_ids.get(business, ()):
        return None
    return next((t for t in ledger.businesses[business].txns if t.trans_source_id == trans_source_id), None)


def duplicate_reply(kind: str, row: dict[str, Any], *, return_data: bool) -> Reply | None:
    """The answer to a repeated ``trans_source_id`` (``row``: the existing row, rendered);
    None for ``field``, whose answer the ledger itself raises."""
    if kind == "conflict":
        return 409, {"errors": {"__all__": [{"code": "pv_txn_duplicate_trans_source_id"}]}}, {}
    if kind == "code":
        return 400, {"errors": {"__all__": [{"code": "pv_txn_duplicate_trans_source_id"}]}}, {}
    if kind == "django":
        return 400, {"transactions": {"__all__": [DJANGO_UNIQUE_MESSAGE]}}, {}
    if kind == "server_error":
        return 500, {"error_message": TASTYPIE_CANNED_ERROR}, {}
    if kind == "silent":
        return created(201, row, return_data=return_data)
    if kind == "opaque":
        message = "This transaction cannot be accepted."
        return 400, {"errors": {"__all__": [{"code": "pv_txn_rejected", "message": message}]}}, {}
    return None


def created(status: int, record: dict[str, Any], *, return_data: bool) -> Reply:
    """A POST's answer: the record with ``return_data``, else an empty body; ``Location`` either way."""
    return status, record if return_data else None, {"Location": str(record["resource_uri"])}


def accepted(record: dict[str, Any], *, return_data: bool, status: int = 202) -> Reply:
    """A PATCH's answer: 202 and an empty body, or ``status`` and the record with ``return_data``."""
    return (status, record, {}) if return_data else (202, None, {})


def customer_of_external_member(ledger: Ledger, business: int, external_member_id: object) -> int:
    """The Perkville user an award ``external_member_id`` names (call under ``ledger.lock``).

    Perkville links a POS customer to a profile by email (its primary identifier), so the sandbox
    follows the business's external-member records with that ``external_member_id`` to their
    email's user.  No record, no email, or records of different users: a 400.
    """
    wanted = str(external_member_id)
    records = [
        r
        for r in ledger.external_members.values()
        if r.get("business") == business and str(r.get("external_member_id")) == wanted
    ]
    users = {
        ledger.email_index.get(str(r["email"]).lower())
        for r in records
        if isinstance(r.get("email"), str) and r["email"]
    }
    users.discard(None)
    if len(users) == 1:
        user = users.pop()
        assert user is not None
        return user
    reason = (
        "No external member has this external_member_id."
        if not records
        else "This external_member_id names several customers."
        if users
        else "No customer is linked to this external member."
    )
    raise SandboxError(400, "external_member_id", "pv_user_not_found", reason)
