"""Signed audit packs: one zip per run that shows what moved and cannot be altered unseen.

``pack`` builds the parts and the zip, ``ledger`` the hash chain over the run's applied events,
``signing`` the Ed25519 keys and signature, ``export`` and ``verify`` the two commands' work
(``bridge/cli/audit_cmd.py`` is the command line).
"""
