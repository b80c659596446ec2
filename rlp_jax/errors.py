"""Errors that the command line reports as one line, without a traceback."""


class UserInputError(ValueError):
  """Bad input from the user (config value, missing file): the message names the key or path."""


class ConfigError(UserInputError):
  """A config key is unknown, has the wrong type or an invalid value."""


class DataError(UserInputError):
  """A data file or directory is missing or unreadable."""
