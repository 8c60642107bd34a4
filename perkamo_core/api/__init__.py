"""The Perkamo v1 HTTP API (FastAPI) over the embedded core's service; the only fastapi user in perkamo_core."""

from __future__ import annotations

from perkamo_core.api.app import create_app

__all__ = ["create_app"]
