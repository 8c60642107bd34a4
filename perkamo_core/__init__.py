"""Embedded Perkamo-compatible core: program modules, rules engine, storage, service, v1 API."""
