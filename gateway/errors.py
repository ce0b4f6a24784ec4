"""One base exception for the daemon, with subclasses that say what went wrong."""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose; the message says what to do."""


class ConfigError(GatewayError, ValueError):
    """The configuration file cannot be used; carries one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SensorError(GatewayError, OSError):
    """A sensor could not be read, or returned data that fails its own checks."""


class SensorRangeError(SensorError):
    """A value lies outside what the chip can physically report (datasheet range)."""


class PublishError(GatewayError):
    """The broker refused the connection or a message."""
