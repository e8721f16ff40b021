"""The one exception type for bad input. The CLI prints its message as a single line and exits non-zero."""


class UserError(Exception):
    """Bad input: a missing or malformed file, an unusable config value, an unreadable model path.

    The message names where the problem is (file, row and field; or config key) and says what is wrong.
    """


def one_line(err: BaseException) -> str:
    """`Type: first line of the message`, for run records and sweep summaries."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


class Interrupted(BaseException):
    """A termination signal (SIGTERM, SLURM's preemption) ended the run. A BaseException, like
    KeyboardInterrupt, so that no library's `except Exception` swallows it."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} received")
