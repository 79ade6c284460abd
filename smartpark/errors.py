"""One exception root for the whole platform.

    SmartparkError
     ├── ConfigError            a configuration file or setting is wrong
     │                          (names the file, the line and the field)
     ├── PayloadError           a wire payload is invalid (names the field path)
     │    └── UnsupportedVersion  a schema version this code does not read
     ├── DeviceError            reading a plant device failed            (retriable)
     │    ├── DeviceTimeout       the device did not answer in time       (retriable)
     │    └── DeviceException     the device answered with an error code  (retriable)
     ├── UsageError             a command was given bad arguments
     ├── NotFound               what a command asked for does not exist
     ├── StorageError           the database refused or lost a write      (retriable)
     └── UnsafeDestination      a webhook URL resolves to a refused address
                                (notifier.ssrf; not retriable)

Retry decisions come from the ``retriable`` class attribute, never from the text of
a message. Exit codes of the ``smartpark`` commands come from the type too, in one
place: :func:`smartpark.cli.exit_code`.
"""

from __future__ import annotations


class SmartparkError(Exception):
    """Root of every error the platform raises on purpose."""

    retriable: bool = False


class ConfigError(SmartparkError):
    """A configuration file or setting is wrong.

    ``str(err)`` reads ``file:line: field: reason`` so an engineer can go straight to
    the mistake.
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.field = field
        where = ""
        if file is not None:
            where = file if line is None else f"{file}:{line}"
            where += ": "
        if field:
            where += f"{field}: "
        super().__init__(f"{where}{reason}")


class PayloadError(SmartparkError):
    """A wire payload is invalid. ``path`` is where (``readings[3].value``)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class UnsupportedVersion(PayloadError):
    """The payload declares a schema version this code does not read."""


class DeviceError(SmartparkError):
    """Reading a plant device failed; the next poll may succeed."""

    retriable = True

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        super().__init__(f"device {device}: {reason}")


class DeviceTimeout(DeviceError):
    """The device did not answer within its timeout."""


class DeviceException(DeviceError):
    """The device answered with a protocol error (e.g. a Modbus exception code)."""


class UsageError(SmartparkError):
    """A command was given arguments it cannot work with (names the argument)."""


class NotFound(SmartparkError):
    """What a command asked for (an alert, a subscription, a delivery) does not
    exist."""


class StorageError(SmartparkError):
    """The database refused or lost a write; nothing of the batch was committed."""

    retriable = True


class ArchivedRange(SmartparkError):
    """A figure computed from the hot database's raw rows was asked over days that
    left it for the sealed archive: computed, it would leave those days out, so it
    is refused, naming them (``days``: (enterprise, local day) pairs, the first
    few)."""

    def __init__(self, what: str, days: list[tuple[str, str]]) -> None:
        listed = ", ".join(f"{e} {d}" for e, d in days)
        super().__init__(
            f"{what} are computed from the hot database only, and the range includes"
            f" days moved to the sealed archive ({listed}); ask for days after them"
            " (raw readings and exports read the archive; rollup aggregates keep"
            " those days)"
        )
        self.what = what
        self.days = days
