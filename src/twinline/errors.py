"""Errors that end a process at start, with a message saying what to do."""


class StartupError(Exception):
    """A process cannot start: a port in use, an address not on this host, a database
    that cannot be opened. The CLI prints the message and exits non-zero."""
