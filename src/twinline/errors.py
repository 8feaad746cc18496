"""Errors shared by the processes, and how an error's text is made safe to send."""


def printable(text: str, limit: int) -> str:
    """`text` with anything but printable ASCII replaced by '?', cut to `limit`: for
    reasons that go on the wire (a SIP reason phrase, a link's Bye) and may echo
    what a peer sent."""
    if not (text.isascii() and text.isprintable()):
        text = "".join(c if " " <= c <= "~" else "?" for c in text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class StartupError(Exception):
    """A process cannot start: a port in use, an address not on this host, a database
    that cannot be opened. The CLI prints the message and exits non-zero."""
