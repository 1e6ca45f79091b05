"""The error every part of the platform config raises on bad input."""


class ConfigError(ValueError):
    """The platform config file is malformed; the message names the key."""
