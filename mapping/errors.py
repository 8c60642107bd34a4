"""Errors of the mapping layer: only bad *parameters* raise; bad *data* becomes a MappingIssue.

::

    MappingError                 base of everything this package raises
    └── MappingConfigError       a parameter the caller controls is invalid (business id,
                                 timezone, id strategy, allow/deny lists); fix the configuration

Records from Perkville never raise: an unusable record is returned as a ``MappingIssue``
(see ``mapping.types``) so the bridge can dead-letter it with the reason and the raw JSON.
"""

from __future__ import annotations


class MappingError(Exception):
    """Base class of the exceptions raised by ``mapping``."""


class MappingConfigError(MappingError, ValueError):
    """A caller-supplied parameter is invalid; the message names it and the accepted values."""
