"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class ClipbertError(Exception):
    """Bad input or a failed stage; the message names the file (and frame, key or line)."""
