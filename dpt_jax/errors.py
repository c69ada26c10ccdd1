"""Every error dpt-jax raises on purpose: one base class, one subclass per kind of input.

str(error) is "<where>: <message>": `where` names the file, folder, URL or picture at fault,
`message` says what is wrong with it (file-derived strings are cut, never quoted at length).
"""

from __future__ import annotations

import os


class DptJaxError(Exception):
    """What went wrong (`message`) and with what (`where`: a path, URL or name; None when nothing is at fault)."""

    def __init__(self, where, message: str | None = None):
        if message is None:  # a message alone: nothing to name
            where, message = None, where
        self.where = None if where is None else os.fspath(where) if isinstance(where, os.PathLike) else str(where)
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return self.message if self.where is None else f"{self.where}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.where, self.message))


class ConfigError(DptJaxError, ValueError):
    """A config field of the wrong type or out of range; the message names the field."""


class CheckpointError(DptJaxError, ValueError):
    """An unreadable, invalid or malicious checkpoint file or folder."""

    @property
    def path(self) -> str:
        return self.where


class ConversionError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model; lists every problem at once."""


class UnknownModelError(DptJaxError, ValueError):
    """A model name that is neither a known name nor an existing file."""


class DownloadError(DptJaxError, OSError):
    """A download that failed (network, HTTP status, timeout, disk space); names the URL."""

    def __str__(self) -> str:
        return f"cannot download {self.where}: {self.message}"

    @property
    def url(self) -> str:
        return self.where


class ImageError(DptJaxError, ValueError):
    """A picture that cannot be used."""

    @property
    def name(self) -> str:
        return self.where


class VideoError(DptJaxError, ValueError):
    """A video that cannot be used."""

    @property
    def name(self) -> str:
        return self.where


class AlignError(DptJaxError, ValueError):
    """A file of known depths that cannot be used for alignment."""

    @property
    def name(self) -> str:
        return self.where


class DatasetError(DptJaxError, ValueError):
    """An evaluation dataset folder or file that does not match its layout or format; names what is missing."""


class PromptError(DptJaxError, ValueError):
    """A depth prompt (Prompt Depth Anything) that cannot be used."""

    @property
    def name(self) -> str:
        return self.where
