"""The one error family for mistakes a user can cause.

Every error raised because of user input (an unreadable image, a bad dataset layout, a bad bundle,
recipe, experiment file, unknown source, patient leakage...) derives from :class:`UnveilError`. The
CLI catches this base once, prints ``error: <message>`` and exits 2; any other exception is a bug
in unveil and keeps its traceback. Subclasses also derive from the closest built-in type
(``ValueError``, ``OSError``...) so that callers catching those keep working.
"""


class UnveilError(Exception):
    """Base of every error caused by user input; its message is the whole explanation."""

    #: the CLI's exit status: 2 for a mistake (bad option, file, layout...); 1 for a partial failure, where a
    #: run could not use some of its inputs (like ``--strict``)
    exit_code: int = 2

    def __str__(self) -> str:
        # KeyError-style reprs (quoted messages) never reach the user: the first argument is the message.
        return str(self.args[0]) if self.args else self.__class__.__name__


class NotFiniteError(UnveilError, ValueError):
    """A number a user gave is NaN, infinite or not a number where only a finite number makes sense."""


def finite(value: object, what: str, error: type[UnveilError] = NotFiniteError) -> float:
    """``value`` as a finite float; ``error`` naming ``what`` otherwise (NaN passes every ``<``/``>`` range check
    as False, so every numeric check starts here). A bool or a string is not a number."""
    if isinstance(value, (bool, str, bytes)):
        raise error(f"{what} must be a number; got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise error(f"{what} must be a number; got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise error(f"{what} must be finite; got {value!r}")
    return number


def first_non_finite(value: object, path: tuple[object, ...] = ()) -> tuple[tuple[object, ...], float] | None:
    """The key path and value of the first NaN or infinite float nested in ``value`` (lists, tuples, mappings),
    or None: how a parsed document (YAML reads ``.nan`` and ``.inf`` as floats) is checked with :func:`finite`."""
    if isinstance(value, float):
        try:
            finite(value, "value")
        except NotFiniteError:
            return path, value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = first_non_finite(item, (*path, index))
            if found:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            found = first_non_finite(item, (*path, key))
            if found:
                return found
    return None


class DiskFullError(UnveilError, OSError):
    """A write failed for lack of space or quota (the message names the file); nothing half-written is kept."""

    def __str__(self) -> str:  # OSError's str() would prefix an errno; the message is already one line
        return str(self.args[0]) if self.args else "disk full"


def no_space(error: BaseException) -> bool:
    """Whether ``error`` is a write failing for lack of space or quota (``OSError`` ENOSPC or EDQUOT)."""
    import errno

    return isinstance(error, OSError) and error.errno in {errno.ENOSPC, getattr(errno, "EDQUOT", 122)}


def disk_full(path: object, error: BaseException) -> DiskFullError:
    """The one-line error for a write to ``path`` that ``error`` (see :func:`no_space`) stopped."""
    return DiskFullError(f"{path}: no space left on the device (disk full or quota exceeded) while writing; "
                         f"nothing half-written was kept: free space and run again")
