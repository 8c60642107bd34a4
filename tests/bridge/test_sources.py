"""The Perkville client satisfies the bridge's source and writer seams."""

from __future__ import annotations

import inspect

from bridge.sources import PerkvilleSource, PerkvilleWriter
from connectors.perkville import PerkvilleClient
from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import make_client


def test_the_client_is_a_perkville_source() -> None:
    box = Sandbox(seed=3, members=2, transactions=3)
    box.start()
    try:
        client = make_client(box)
        try:
            assert isinstance(client, PerkvilleSource)
        finally:
            client.close()
    finally:
        box.stop()


def test_every_seam_method_has_the_clients_signature() -> None:
    for seam in (PerkvilleSource, PerkvilleWriter):
        for name, member in inspect.getmembers(seam, inspect.isfunction):
            if name.startswith("_"):
                continue
            ours = inspect.signature(member)
            theirs = inspect.signature(getattr(PerkvilleClient, name))
            assert list(ours.parameters) == list(theirs.parameters), name
            for pname, param in ours.parameters.items():
                assert param.kind == theirs.parameters[pname].kind, (name, pname)
