"""Exception types for problems a user can fix. The CLIs print them as one line and exit non-zero."""


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent. The message names the file, the row or column,
    and what was expected."""


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an invalid value; the message names the key."""
