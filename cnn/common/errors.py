"""Errors a user can cause (and fix); `main.py` prints them without a
traceback. Anything else is a bug and keeps its traceback."""


class UserError(ValueError):
  """A bad name, size, config value or workdir; the message says the fix."""
