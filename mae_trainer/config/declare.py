"""How a run config is declared and checked: :func:`option` (one declaration per setting: default, help,
choices, check, help group, recipe and resume rules), the checks, :func:`parse_value` (the one parse of a
flag's text and a recipe's value), :class:`RunConfig` (checks on construction, recipe conversion) and
:class:`ConfigError`. Nothing here imports torch."""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InputError
from ..report_to import report_to_problem


class ConfigError(InputError):
    """A config value that is not valid. ``key`` is the field; ``detail`` is what follows its name in the
    message (`` 1.5: must be between 0 and 1``, or ``: required`` without a value); the CLI prints
    ``--mask-ratio 1.5: must be ...``."""

    def __init__(self, key: str, value: Any, reason: str):
        self.key = key
        self.detail = f": {reason}" if value in ("", None) else f" {value}: {reason}"
        super().__init__(key + self.detail)

    @classmethod
    def about(cls, key: str, err: InputError) -> ConfigError:
        """``err`` (whose message starts with the offending value or file) as a fault of field ``key``."""
        if isinstance(err, ConfigError):
            return err
        wrapped = cls(key, None, "")
        wrapped.detail = f" {err}"
        wrapped.args = (key + wrapped.detail,)
        return wrapped


@contextlib.contextmanager
def about(key: str):
    """Inside this block, an :class:`InputError` is a fault of the config field ``key``."""
    try:
        yield
    except InputError as err:
        raise ConfigError.about(key, err) from None


# ------------------------------------------------------------------------------------------ declarations


def option(
    default: Any = None,
    help: str = "",
    *,
    check: Callable[[Any], str | None] | None = None,
    choices: tuple | None = None,
    group: str | None = None,
    metavar: str | None = None,
    exclusive: str | None = None,
    recipe: bool = True,
    resume: str | None = None,
) -> Any:
    """A config field: default, help, the values allowed (``choices`` or a ``check`` that returns what is
    wrong, or None), its help group, the set of flags it excludes on a command line (``exclusive``),
    whether it belongs in a recipe (a secret token does not), and what a resumed run may do with it
    (``resume``: ``"same"``, it changes the math of the remaining steps and must equal the checkpoint's;
    ``"length"``, it changes the run's length, allowed with ``--replan``; None, free to change:
    :mod:`mae_trainer.training.run_state`)."""
    metadata = {"help": help, "check": check, "choices": choices, "group": group, "metavar": metavar}
    metadata.update(exclusive=exclusive, recipe=recipe, resume=resume)
    return dataclasses.field(default=default, metadata=metadata)


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda value: None if value is None or value >= low else f"must be at least {low}"


def positive(value) -> str | None:
    return None if value is None or value > 0 else "must be positive"


def fraction(value) -> str | None:
    return None if value is None or 0 < value < 1 else "must be between 0 and 1"


def existing(value) -> str | None:
    """An input path: it must exist (what it holds is checked by the code that reads it)."""
    return None if value is None or Path(value).exists() else "no such file or directory"


def in_unit_interval(value) -> str | None:
    return None if 0 <= value < 1 else "must lie in [0, 1)"


def report_to(value) -> str | None:
    """A ``--report-to`` list: known trackers, each installed (``report_to.py``, import-light)."""
    return report_to_problem(value)


def parse_value(kind: type, value: Any) -> Any:
    """``value`` as a field of type ``kind`` (int, float, str, Path or bool): text as typed on a command line,
    or a YAML scalar. Nothing is truncated or reinterpreted: ``2.7`` is not an int, ``true`` is not a number,
    a number is not a path; ``2.0`` is the int 2. Raises ValueError saying what was expected."""
    if isinstance(value, (list, dict)):
        raise ValueError(f"expected one value, not a {'list' if isinstance(value, list) else 'mapping'}")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected {_KIND_NAMES.get(kind, kind.__name__)}, not {str(value).lower()}")
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"expected a whole number, not {value}")
            return int(value)
        return int(value)  # an int, or text: int("2.7") and int("abc") raise
    if kind is float:
        return float(value)
    if kind is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError("expected a path")
        return Path(value)
    if isinstance(value, float | int | str):
        return kind(value)
    raise ValueError(f"expected {_KIND_NAMES.get(kind, kind.__name__)}")


_KIND_NAMES = {int: "a whole number", float: "a number", str: "text", Path: "a path"}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every command config shares: declarations, checks, recipe conversion."""

    command: ClassVar[str] = ""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            meta = self.declaration(field.name)
            value = getattr(self, field.name)
            choices = meta.get("choices")
            if choices is not None and value is not None and value not in choices:
                raise ConfigError(field.name, value, f"choose one of {', '.join(map(str, choices))}")
            problem = meta["check"](value) if meta.get("check") else None
            if problem:
                raise ConfigError(field.name, value, problem)
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields (each command adds its own)."""

    @classmethod
    def declaration(cls, name: str) -> dict:
        """The field's declaration, from the class that declared it with :func:`option` (a subclass may
        change only the default, e.g. ``epochs: int = 800``)."""
        for klass in cls.__mro__:
            field = getattr(klass, "__dataclass_fields__", {}).get(name)
            if field is not None and field.metadata:
                return dict(field.metadata)
        return {"help": "", "recipe": True}

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Each field's value type (``int | None`` → ``int``; bools stay ``bool``)."""
        hints = typing.get_type_hints(cls)
        result = {}
        for field in dataclasses.fields(cls):
            hint = hints[field.name]
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
            result[field.name] = hint
        return result

    @classmethod
    def convert(cls, name: str, value: Any) -> Any:
        """Field ``name``'s value from a command line's text or a recipe file's YAML value, parsed and
        checked the same way for both (:func:`parse_value`, then the field's choices). A recipe's ``null``
        is left out by the reader: it means the default."""
        value = parse_value(cls.field_types()[name], value)
        choices = cls.declaration(name).get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"choose one of {', '.join(map(str, choices))}")
        return value

    @classmethod
    def from_mapping(cls, values: dict[str, Any]):
        """A config from ``{field: value}`` (unknown keys refused; keys may use ``-``)."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], values[unknown[0]], f"unknown setting of {cls.command}")
        return cls(**values)

    def to_recipe(self) -> dict[str, Any]:
        """The settings as a recipe file's mapping (paths as text, secrets left out)."""
        return {
            f.name.replace("_", "-"): str(v) if isinstance(v := getattr(self, f.name), Path) else v
            for f in dataclasses.fields(self)
            if self.declaration(f.name).get("recipe", True)
        }


def world_size() -> int:
    """Ranks of this run as the launcher announces them (1 without a launcher), known before any process
    group exists, so that checks depending on it fail before any work."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def deepspeed_launched() -> bool:
    """Whether ``accelerate launch`` started this process with a DeepSpeed config (known before any process
    group exists): the engine whose optimizer-state format a checkpoint will hold."""
    import os

    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
