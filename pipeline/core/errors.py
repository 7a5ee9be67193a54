"""The one exception type for bad user input: its message is the single line a user sees."""


class InputError(ValueError):
    """Bad input (missing data, broken split file, corrupt image or cache, wrong config).

    The message names the offending file or config key in one line; stage CLIs print it and exit 2.
    """
