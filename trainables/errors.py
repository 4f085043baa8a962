"""Errors for user mistakes: CLIs print them on one line and exit 2, without a traceback."""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError"]


class UserError(ValueError):
    """A mistake in what the user asked for (spec, arguments, files), not a bug."""


class ConfigError(UserError):
    """A bad configuration value; the message names the field, the value and what is allowed."""


class DataError(UserError):
    """A missing or malformed dataset; the message names the path and the expected layout."""


class CheckpointError(UserError):
    """A corrupt, truncated or unsafe checkpoint; the message names the file."""
