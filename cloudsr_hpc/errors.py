"""Errors that reach the user as one line naming the file/key and what is wrong."""


class CloudSRError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits non-zero."""


class ConfigError(CloudSRError):
    """A configuration file or override is malformed, unknown or ill-typed."""


class InputError(CloudSRError):
    """An input file (satellite scene, shard, checkpoint) is missing, truncated or inconsistent."""


class ArchiveError(CloudSRError):
    """The archive index has no usable file for the requested date/time."""


def one_line(msg: str) -> str:
    """Collapse a message to a single line (library errors often carry newlines)."""
    return " ".join(str(msg).split())


class OutputError(CloudSRError):
    """An output could not be written (disk full, permissions, outside its configured root)."""


class Interrupted(CloudSRError):
    """Work stopped on a signal (the scheduler's time-limit warning, a cancel, a preemption): the
    scene in hand is abandoned cleanly and is not a failure of that scene."""
