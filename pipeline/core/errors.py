"""The exception for bad user input (its message is the single line a user sees), and the one a
stage raises when it is told to stop."""


class InputError(ValueError):
    """Bad input (missing data, broken split file, corrupt image or cache, wrong config).

    The message names the offending file or config key in one line; stage CLIs print it and exit 2.
    """


class Interrupted(BaseException):
    """The process received SIGTERM (``pipeline.core.cli.guarded`` installs the handler).

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception`` does not swallow it
    and every ``with`` block on the way out (``atomic_path``, open HDF5 files) cleans up.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"received signal {signum}")
        self.signum = signum
