"""What a run opens before its database: the business it is for, its Perkville client, and the
first requests that client sends while the rest of the command starts up (``SourceOpening``).

Light on purpose: this module imports the connector, not the database layer or the core, so a
command can start the opening first and import those meanwhile (``bench/README.md``: a
``perkbridge backfill`` spends about half a second importing them).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from bridge.errors import ConfigurationError
from bridge.signposts import Signposts, read_signposts
from config.settings import Settings
from connectors.perkville.errors import AuthError, RetriableError

if TYPE_CHECKING:
    from connectors.perkville import PerkvilleClient


def business_of(settings: Settings, business: str | None) -> str:
    """``--business`` or ``PERKVILLE_BUSINESS_ID``; a configuration error when neither is set."""
    chosen = business or settings.perkville_business_id
    if not chosen:
        raise ConfigurationError(
            "no business to work on: set PERKVILLE_BUSINESS_ID or pass --business ID"
        )
    return str(chosen)


def perkville_client(settings: Settings, **overrides: Any) -> PerkvilleClient:
    """A ``PerkvilleClient`` from the settings (credentials, tuning, timezone)."""
    from connectors.perkville import PerkvilleClient
    from connectors.perkville.errors import ConfigurationError as PerkvilleConfigError

    tuning = settings.perkville
    secret = settings.perkville_client_secret
    password = settings.perkville_password
    token = settings.perkville_access_token
    kwargs: dict[str, Any] = {
        "api_url": settings.perkville_api_url,
        "token_url": settings.perkville_token_url,
        "client_id": settings.perkville_client_id,
        "client_secret": secret.get_secret_value() if secret else None,
        "username": settings.perkville_username,
        "password": password.get_secret_value() if password else None,
        "access_token": token.get_secret_value() if token else None,
        "scope": tuning.scope,
        "page_size": tuning.page_size,
        "requests_per_second": tuning.requests_per_second,
        "max_in_flight": tuning.max_in_flight,
        "max_retries": tuning.max_retries,
        "timeout": tuning.timeout_seconds,
        "timezone": settings.perkville_timezone,
        "backoff_base": tuning.backoff_base_seconds,
        "backoff_max": tuning.backoff_max_seconds,
        "external_member_field": tuning.external_member_field,
    }
    kwargs.update(overrides)
    if not kwargs["access_token"]:
        missing = [
            name
            for name, key in (
                ("PERKVILLE_CLIENT_ID", "client_id"),
                ("PERKVILLE_CLIENT_SECRET", "client_secret"),
                ("PERKVILLE_USERNAME", "username"),
                ("PERKVILLE_PASSWORD", "password"),
            )
            if not kwargs[key]
        ]
        if missing:
            raise ConfigurationError(
                f"Perkville credentials missing: {', '.join(missing)} not set (environment or the "
                "--config file's lower-case keys); set them for the password grant, or set "
                "PERKVILLE_ACCESS_TOKEN instead"
            )
    try:
        client = PerkvilleClient(**kwargs)
    except PerkvilleConfigError as exc:
        raise ConfigurationError(str(exc)) from None
    return client


class SourceOpening:
    """A run's first Perkville requests, sent from a thread while the command starts up.

    A backfill's first requests each wait for the one before: the token, then the three
    signposts (the newest change of users, connections and transactions, which must be read
    before any data). Sent as soon as the settings are read, they are answered by the time the
    run holds its lease and asks for them (``Pipeline(early_signposts=...)``), instead of after
    the database layer and the core are imported and opened.

    The signposts are read before the run knows the business's probed API schema: a signpost
    read by another field than the one the schema calls for is read again by the run
    (``read_signposts(earlier=...)``). A failure is handed to the run: the token or the network
    failing (``AuthError``, ``RetriableError``, after every retry) is raised to it as its own;
    any other refusal (a 4xx to an ordering the schema would have withheld) makes the run read
    the signposts itself. The run starts from the rate the business's last run learned as soon
    as the state is open (``RequestBudget.resume``).
    """

    def __init__(self, client: PerkvilleClient, business: str, timezone: str) -> None:
        self.client = client
        self.business = business
        self._timezone = timezone
        self._signposts: Signposts | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, name="perkville-opening", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            self._signposts = read_signposts(self.client, self.business, self._timezone)
        except BaseException as exc:  # noqa: BLE001 - handed to the run (``signposts``)
            self._error = exc

    def signposts(self) -> Signposts | None:
        """The signposts read, once they are, for the one run they were read for; None: the run
        reads them itself (and a later run of the same parts always does). Raises what the token
        or the network raised."""
        self._thread.join()
        found, self._signposts = self._signposts, None
        error, self._error = self._error, None
        if isinstance(error, (AuthError, RetriableError)):
            raise error
        return found


def open_source(settings: Settings, business: str | None) -> SourceOpening:
    """The business's Perkville client, its opening requests already on their way."""
    chosen = business_of(settings, business)
    return SourceOpening(perkville_client(settings), chosen, settings.perkville_timezone)
