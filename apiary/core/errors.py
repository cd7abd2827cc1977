"""The one base class of Apiary's own errors.

Every error the project raises on purpose derives from :class:`ApiaryError`, so the CLI's
single error boundary can print it as one line and exit with its ``exit_code``, and the
admin API can answer it with its ``http_status``, without either knowing every subclass.
"""

from __future__ import annotations


class ApiaryError(Exception):
    """An error with a message meant for the person running Apiary.

    ``exit_code`` is what the command line exits with (2: bad input or configuration,
    1: a failure while running); ``http_status`` is what the admin API answers with.
    """

    exit_code: int = 1
    http_status: int = 500


class ConfigError(ApiaryError):
    """A setting, flag or file the user gave cannot be used; the message says how to fix it."""

    exit_code = 2
    http_status = 400


class InvalidInput(ConfigError, ValueError):
    """A value or file the user gave is malformed (a bad shard file, an unknown hospital or
    model). Also a ``ValueError``, which is what the code raising it always raised."""
