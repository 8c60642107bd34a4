"""Build the bridge's parts from ``Settings``: engine, state store, core, Perkville client, target, config.

The scheduler and the CLI both call these, so a scheduled sync and ``perkbridge sync`` run the
same code with the same objects.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from bridge.errors import VALID_DATABASE_URLS, ConfigurationError, database_error
from bridge.opening import SourceOpening
from bridge.opening import business_of as business_of
from bridge.opening import perkville_client as perkville_client
from bridge.pipeline import Pipeline, PipelineConfig
from bridge.progress import Progress
from bridge.reconcile import Reconciler
from bridge.state import StateStore
from bridge.targets import EmbeddedTarget, RemoteTarget, Target
from bridge.writeback import WritebackConfig
from config.settings import ConfigError, Settings

if TYPE_CHECKING:
    from connectors.perkville import PerkvilleClient
    from connectors.perkville.schema import ApiSchema


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every secret value of the settings, for redaction of error messages."""
    values: list[str] = []
    for secret in (
        settings.perkville_client_secret,
        settings.perkville_password,
        settings.perkville_access_token,
        settings.perkamo_secret_key,
        settings.dashboard_secret,
    ):
        if secret is not None and secret.get_secret_value():
            values.append(secret.get_secret_value())
    return tuple(values)


def scheduled_businesses(settings: Settings) -> list[str]:
    """``schedule.businesses``, else ``PERKVILLE_BUSINESS_ID``; ``ConfigError`` when neither."""
    chosen = [b.strip() for b in settings.schedule.businesses if b.strip()]
    if not chosen and settings.perkville_business_id:
        chosen = [settings.perkville_business_id.strip()]
    if not chosen:
        raise ConfigError(
            "no business to schedule: set schedule.businesses in the config file "
            "or PERKVILLE_BUSINESS_ID"
        )
    return list(dict.fromkeys(chosen))


def space_for(settings: Settings, business: str) -> str:
    """The Space a business syncs into.

    One business: ``PERKAMO_SPACE``.  Several scheduled businesses: ``{PERKAMO_SPACE}-{business}``
    each, because Perkville users are global while points belong to one business's connection —
    two businesses in one Space would merge a shared member's wallets.
    """
    try:
        businesses = scheduled_businesses(settings)
    except ConfigError:  # no schedule configured: the plain Space
        return settings.perkamo_space
    if len(businesses) <= 1:
        return settings.perkamo_space
    return f"{settings.perkamo_space}-{business}".lower()


def writeback_config(settings: Settings, business: str, *, space: str | None = None) -> WritebackConfig:
    """``WritebackConfig`` from the settings."""
    return WritebackConfig(
        business=business,
        space=space or space_for(settings, business),
        event_perks=dict(settings.writeback.event_perks),
        external_members=settings.writeback.external_members,
        batch_size=settings.writeback.batch_size,
        id_strategy=settings.sync.id_strategy,
        timezone=settings.perkville_timezone,
        lease_seconds=settings.schedule.lease_seconds,
        secrets=secret_values(settings),
    )


def pipeline_config(settings: Settings, business: str) -> PipelineConfig:
    return PipelineConfig(
        business=business,
        timezone=settings.perkville_timezone,
        id_strategy=settings.sync.id_strategy,
        lookback_days=settings.sync.lookback_days,
        overlap_seconds=settings.sync.cursor_overlap_seconds,
        trait_allow=tuple(settings.sync.trait_allow) if settings.sync.trait_allow is not None else None,
        trait_deny=tuple(settings.sync.trait_deny),
        lease_seconds=settings.schedule.lease_seconds,
        secrets=secret_values(settings),
        target_kind=settings.perkamo_target,
        tiers=tuple(sorted(settings.tiers.items())),
    )


def open_engine(settings: Settings, *, pool_size: int = 5) -> Engine:
    from perkamo_core.db import create_db_engine

    try:
        return create_db_engine(settings.database_url, pool_size=pool_size)
    except Exception as exc:  # noqa: BLE001 - a bad URL is a configuration problem
        problem = database_error(exc, settings.database_url)
        if isinstance(problem, ConfigurationError):
            raise problem from None
        # Never the exception's text: a URL parser's message may quote part of the password.
        raise ConfigurationError(
            f"PERKBRIDGE_DATABASE_URL is not usable ({type(exc).__name__}); use {VALID_DATABASE_URLS}"
        ) from None


def open_state(engine: Engine) -> StateStore:
    state = StateStore(engine)
    state.migrate()
    return state


def probed_schema(state: StateStore, business: str) -> ApiSchema | None:
    """The API schema the business's last ``perkbridge probe`` read (None: not probed, or none served)."""
    from connectors.perkville.schema import ApiSchema

    recorded = state.probes.latest(business)
    if recorded is None:
        return None
    schema = ApiSchema.from_json(recorded.report.get("schema"))
    return schema if schema.how != "none" else None


@dataclass
class TargetBundle:
    """The target plus what was opened for it (the core service of an embedded target)."""

    target: Target
    service: Any = None
    client: Any = None

    def close(self) -> None:
        if self.client is not None and hasattr(self.client, "close"):
            self.client.close()


def core_service(engine: Engine) -> Any:
    from perkamo_core.service import CoreService

    service = CoreService(engine)
    service.migrate()
    return service


def build_target(settings: Settings, engine: Engine, *, space: str | None = None) -> TargetBundle:
    """The configured ``PERKAMO_TARGET``: the embedded core, or a remote API via ``PerkamoClient``."""
    if settings.perkamo_target == "remote":
        key = settings.perkamo_secret_key
        if key is None or not key.get_secret_value():
            raise ConfigurationError("PERKAMO_TARGET=remote needs PERKAMO_SECRET_KEY")
        from connectors.perkamo import PerkamoClient

        client = PerkamoClient(key.get_secret_value(), base_url=settings.perkamo_base_url)
        return TargetBundle(
            RemoteTarget(
                client,
                engine,
                batch_size=settings.sync.remote_batch_size,
                max_in_flight=settings.perkville.max_in_flight,
                tiers=settings.tiers,
            ),
            client=client,
        )
    service = core_service(engine)
    return TargetBundle(
        EmbeddedTarget(service, engine, space or settings.perkamo_space, outbox=False, tiers=settings.tiers),
        service=service,
    )


class RunParts:
    """What a run of one business opens from the settings: its state store, target, Perkville
    client, and from them the pipeline and the reconciler. The CLI's run commands and the
    scheduler's jobs build their runs here, so both run the same objects. ``close`` releases
    the client and the target, and the engine too when ``owns_engine``. ``opening``: the client
    a command opened before its database (``bridge.opening``), with the signposts it is reading."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        business: str,
        *,
        space: str | None = None,
        with_client: bool = True,
        owns_engine: bool = False,
        opening: SourceOpening | None = None,
    ) -> None:
        if opening is not None and (opening.business != business or not with_client):
            raise ValueError("an opening serves the run of its own business, with its client")
        self.owns_engine = owns_engine
        self.settings = settings
        self.engine = engine
        self.business = business
        self.space = space or space_for(settings, business)
        self.opening = opening
        self.source: PerkvilleClient | None = opening.client if opening is not None else None
        try:
            self.state = open_state(engine)
            self.bundle = build_target(settings, engine, space=self.space)
        except BaseException:
            if self.source is not None:
                self.source.close()
            raise
        try:
            if self.source is None and with_client:
                self.source = perkville_client(settings)
            if self.source is not None:
                # The request rate the last run of this business learned is where this one starts
                # (an opening's first requests are out already: the budget goes on from it).
                self.source.budget.resume(self.state.runs.learned_rate(business))
                self.source.use_schema(probed_schema(self.state, business))
        except BaseException:
            if self.source is not None:
                self.source.close()
            self.bundle.close()
            raise

    def _client(self) -> PerkvilleClient:
        if self.source is None:
            raise RuntimeError("these run parts were opened without a Perkville client")
        return self.source

    def pipeline(self, progress: Progress | None = None, stop: threading.Event | None = None) -> Pipeline:
        return Pipeline(
            state=self.state,
            source=self._client(),
            target=self.bundle.target,
            config=pipeline_config(self.settings, self.business),
            progress=progress,
            stop=stop,
            early_signposts=self.opening.signposts if self.opening is not None else None,
        )

    def reconciler(self, progress: Progress | None = None) -> Reconciler:
        return Reconciler(
            state=self.state,
            source=self._client(),
            target=self.bundle.target,
            business=self.business,
            timezone=self.settings.perkville_timezone,
            id_strategy=self.settings.sync.id_strategy,
            progress=progress,
            tiers=self.settings.tiers,
        )

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        self.bundle.close()
        if self.owns_engine:
            self.engine.dispose()
