"""The one exception type for bad input. The CLI prints its message as a single line and exits non-zero."""


class UserError(Exception):
    """Bad input: a missing or malformed file, an unusable config value, an unreadable model path.

    The message names where the problem is (file, row and field; or config key) and says what is wrong.
    """
