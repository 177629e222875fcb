"""User-facing errors.

Every mistake a user can make (unknown dataset, missing file, bad column, impossible split, ...)
raises :class:`FedmolError` with a message that says what was wrong and what to do. The CLI turns
it into one red line and exit code 2, never a traceback.
"""


class FedmolError(Exception):
    """An error caused by user input, shown to the user without a traceback: ``<label>: <message>``
    on one line, exit code ``exit_code`` (:func:`fedmol.cli_common.friendly`)."""

    label = "error"
    exit_code = 2
    #: printed as written (a pilot's log tail); else the message's whitespace is one space: one line
    multiline = False


class InternalError(FedmolError):
    """Something fedmol did not expect while reading untrusted input (never a traceback)."""

    exit_code = 3


class DataError(FedmolError):
    """A dataset, CSV or split file is missing, corrupt or unusable."""


class ChecksumError(DataError):
    """A file's sha256 differs from the registry's."""


def requirement(field) -> str:
    """A pydantic field's type and range in words, for a one-line error or a table: ``"a number > 0"``,
    ``"an integer >= 1 or null"``, ``"true or false"``, ``"'drop' or 'min'"`` (a field may say it
    itself with ``json_schema_extra={"requirement": ...}``)."""
    import types
    from typing import Literal, Union, get_args, get_origin

    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "requirement" in extra:
        return str(extra["requirement"])
    ann = field.annotation
    args = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
    words = []
    for a in args:
        if a is type(None):
            continue
        if get_origin(a) is Literal:
            vals = [repr(v) for v in get_args(a)]
            words.append(" or ".join(vals) if len(vals) <= 2 else "one of " + ", ".join(vals))
        elif get_origin(a) is list:
            words.append("a list of strings")
        else:
            words.append({bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(a, str(a)))
    bounds = {type(m).__name__.lower(): getattr(m, type(m).__name__.lower()) for m in field.metadata
              if type(m).__name__ in ("Gt", "Ge", "Lt", "Le")}
    lo = [(k, v) for k, v in bounds.items() if k in ("gt", "ge")]
    hi = [(k, v) for k, v in bounds.items() if k in ("lt", "le")]
    if lo and hi:
        rng = f" in {'[' if lo[0][0] == 'ge' else '('}{lo[0][1]}, {hi[0][1]}{']' if hi[0][0] == 'le' else ')'}"
    else:
        rng = "".join(f" {dict(gt='>', ge='>=', lt='<', le='<=')[k]} {v}" for k, v in lo + hi)
    text = " or ".join(words) + rng
    return text + " or null" if type(None) in args else text
