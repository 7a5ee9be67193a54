"""The exception for bad user input (its message is the single line a user sees), and the one a
stage raises when it is told to stop."""


class InputError(ValueError):
    """Bad input (missing data, broken split file, corrupt image or cache, wrong config).

    The message names the offending file or config key in one line; stage CLIs print it and exit 2.
    """


class Interrupted(KeyboardInterrupt):
    """The process received SIGTERM (``pipeline.core.cli.guarded`` installs the handler).

    A ``KeyboardInterrupt``, as for SIGINT: ``except Exception`` does not swallow it, every ``with``
    block on the way out (``atomic_path``, open HDF5 files) cleans up, and a DataLoader worker
    (which inherits the handler) exits quietly, leaving the report to the main process.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"received signal {signum}")
        self.signum = signum
