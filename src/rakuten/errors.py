"""Base class of every expected failure: stage scripts print its message as one line and exit 2."""


class RakutenError(Exception):
    """Bad input, bad config, missing or inconsistent artifacts: the user can fix it."""
