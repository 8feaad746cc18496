"""twinline: enhanced telephone services on application servers that back each other
up call by call."""

__version__ = "0.1.0"
