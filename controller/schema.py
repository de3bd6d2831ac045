"""Load YAML into frozen dataclasses, with one-line errors naming the file and the key."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml

from controller.errors import ControllerError
from controller.vocabulary import Reason

T = TypeVar("T")
DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?")


class Parsed(ABC):
    """A value written as one string in the config (``HOST:PORT``...), parsed in one place."""

    EXAMPLE = ""

    @classmethod
    @abstractmethod
    def parse(cls, text: str) -> Self:
        """The value ``text`` stands for; ValueError saying what was expected otherwise."""


class Seconds(float):
    """A duration in the config: a number of seconds, or ``30s``, ``5m``, ``1h30m`` as Flux and Argo CD take
    (and ``90d``, for how long history is kept)."""


def parse_duration(text: str) -> float | None:
    """``1h30m`` -> 5400.0, ``2d`` -> 172800.0; None when ``text`` is not a duration."""
    match = DURATION.fullmatch(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        return None
    days, hours, minutes, secs = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)


def read_yaml(path: Path, what: str, shown: Path | None = None) -> Any:
    """Parse a YAML file; a missing, unreadable, binary or malformed file is a ConfigInvalid error naming
    ``shown`` (default: ``path``), e.g. ``gitops.yml`` rather than its place in a throwaway workspace."""
    name = shown or path
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError as exc:
        raise ControllerError(Reason.CONFIG_INVALID, f"{name}: {what} not found") from exc
    except OSError as exc:
        raise ControllerError(Reason.CONFIG_INVALID, f"{name}: cannot read {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ControllerError(Reason.CONFIG_INVALID, f"{name}: {what} is not UTF-8 text (byte "
                                                     f"0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise ControllerError(Reason.CONFIG_INVALID, f"{name}:{where}: {exc.problem or 'not valid YAML'}") from None
    except yaml.YAMLError as exc:  # the reader's: a control character (a binary file that happens to be UTF-8)
        reason = getattr(exc, "reason", None) or "not valid YAML"
        raise ControllerError(Reason.CONFIG_INVALID, f"{name}: {what} is not YAML text ({reason})") from None


def build(cls: type[T], data: Any, *, file: Path, key: str = "") -> T:
    """Build dataclass ``cls`` from parsed YAML, rejecting unknown keys and wrong types."""
    value = _convert(cls, data, file, key)
    return typing.cast(T, value)


def _fail(file: Path, key: str, message: str) -> ControllerError:
    return ControllerError(Reason.CONFIG_INVALID, f"{file}: {key or '(top level)'}: {message}")


def _convert(tp: Any, data: Any, file: Path, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        if all(typing.get_origin(o) is typing.Literal for o in options):  # Literal["a"] | Literal["b", "c"]
            return _choice(tuple(c for o in options for c in typing.get_args(o)), data, file, key)
        if len(options) > 1 and all(o in _NAMES for o in options):  # int | str: the one the value is
            for option in options:
                if isinstance(data, option) and not (option is int and isinstance(data, bool)):
                    return data
            raise _fail(file, key, f"expected {' or '.join(_NAMES[o] for o in options)}, got {_kind(data)}")
        return _convert(options[0], data, file, key)
    if isinstance(tp, type) and issubclass(tp, Parsed):
        if not isinstance(data, str):
            raise _fail(file, key, f"expected a string such as {tp.EXAMPLE}, got {_kind(data)}")
        try:
            return tp.parse(data)
        except ValueError as exc:
            raise _fail(file, key, f"{exc}, got {data!r}") from None
    if dataclasses.is_dataclass(tp):
        return _dataclass(typing.cast(type, tp), data, file, key)
    if origin is typing.Literal:
        return _choice(typing.get_args(tp), data, file, key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(_choice(tuple(member.value for member in tp), data, file, key))
    if origin is tuple:
        if not isinstance(data, list):
            raise _fail(file, key, f"expected a list, got {_kind(data)}")
        item = typing.get_args(tp)[0]
        return tuple(_every(file, [(f"{key}[{i}]", item, v) for i, v in enumerate(data)]))
    if tp is Seconds:
        duration = parse_duration(data) if isinstance(data, str) else None
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            duration = float(data)
        if duration is not None and duration < 0:
            raise _fail(file, key, "must not be negative")
        if duration is None or not math.isfinite(duration):
            raise _fail(file, key, f"expected a duration such as 30, 30s, 5m or 1h30m, got {data!r}")
        return Seconds(duration)
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if tp in (str, int, float, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise _fail(file, key, f"expected {_NAMES[tp]}, got {_kind(data)}")
        return data
    raise TypeError(f"schema cannot convert to {tp!r}")


def _choice(choices: tuple[Any, ...], data: Any, file: Path, key: str) -> Any:
    if data is False and "off" in choices:
        return "off"  # YAML 1.1 reads an unquoted off as false; it means the choice named off
    if data not in choices:
        raise _fail(file, key, f"must be one of {', '.join(map(str, choices))}, got {data!r}")
    return data


def _dataclass(cls: type, data: Any, file: Path, key: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(file, key, f"expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [_fail(file, _join(key, str(name)), f"unknown key (expected one of: {', '.join(sorted(fields))})")
               for name in sorted(set(data) - set(fields), key=str)]
    missing = [_fail(file, _join(key, name), "missing required key") for name, field in fields.items()
               if name not in data and field.default is dataclasses.MISSING
               and field.default_factory is dataclasses.MISSING]
    given = [name for name in fields if name in data]
    values = _every(file, [(_join(key, name), hints[name], data[name]) for name in given], unknown + missing)
    return cls(**dict(zip(given, values, strict=True)))


def _every(file: Path, items: list[tuple[str, Any, Any]], found: list[ControllerError] | None = None) -> list[Any]:
    """Each ``(key, type, data)`` converted, in order; when any (or ``found``) failed, one error with each problem
    on a line of its own, so that a config is put right in one go rather than one key a run."""
    values, problems = [], [line for error in found or [] for line in error.message.splitlines()]
    for key, tp, data in items:
        try:
            values.append(_convert(tp, data, file, key))
        except ControllerError as error:
            problems.extend(error.message.splitlines())
    if problems:
        raise ControllerError(Reason.CONFIG_INVALID, "\n".join(problems))
    return values


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _kind(data: Any) -> str:
    """What a value is, and the value itself when it is a scalar (cut at 40 characters)."""
    if data is None:
        return "nothing"
    for tp, name in _NAMES.items():
        if isinstance(data, tp):
            shown = repr(data) if len(repr(data)) <= 40 else repr(data)[:37] + "..."
            return f"{name} ({shown})"
    if isinstance(data, dict):
        return "a mapping"
    return "a list" if isinstance(data, list) else type(data).__name__


_NAMES: dict[type, str] = {bool: "true/false", str: "a string", int: "a whole number", float: "a number"}
