"""Composition root: settings wiring, pipeline, state store, reconcile, write-back, scheduler, CLI."""
