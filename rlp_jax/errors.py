"""Errors that the command line reports as one line, without a traceback."""


class UserInputError(ValueError):
  """Bad input from the user (config value, missing file): the message names the key or path."""


class ConfigError(UserInputError):
  """A config key is unknown, has the wrong type or an invalid value."""


class DataError(UserInputError):
  """A data file or directory is missing or unreadable."""


class NonFiniteError(UserInputError):
  """The run stopped after `train.max_nonfinite_steps` non-finite steps in a row (the settings,
  usually the learning rate, need changing); the last finite state is checkpointed."""


class WorkdirError(UserInputError):
  """The --workdir cannot be used: a file, under a file, or not writable."""
