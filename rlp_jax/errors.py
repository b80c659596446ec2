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


class CheckpointError(UserInputError):
  """No intact checkpoint can be restored, or a checkpoint does not fit the configured state
  (the message names the step and what is wrong)."""


class RunChangedError(UserInputError):
  """A resume found that what the checkpoint depends on (model shape, tokenizer, data) changed
  since it was written; the message says what changed and which flag, if any, allows it."""
