"""Command-line flags built from the run configs' declarations (:mod:`mae_trainer.config`), recipe files
read against the same declarations, and the one place that turns a bad value into a line naming its flag.

Precedence: the config's defaults, then the recipe file (``--recipe FILE`` or ``--recipe=FILE``), then the
flags given on the command line. Flags default to "not given" (``argparse.SUPPRESS``), so the namespace
holds exactly what the user typed and the config is built once from ``{**recipe, **typed}``. A flag's text
and a recipe's value go through the same parse (:meth:`RunConfig.convert`: no truncation of ``2.7`` to 2, no
``true`` as 1) and the same checks; a recipe's ``null`` means the setting's default.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path

from ..config import ConfigError, RunConfig, parse_value
from ..errors import InputError, UsageError

GROUP_TITLES = {
    "data": "data",
    "resolution": "resolution schedule (progressive resolution, DailyMAE)",
    "model": "model",
    "optimisation": "optimisation (MAE recipe defaults)",
    "augmentation": "augmentation (MAE fine-tune defaults)",
    "run": "run",
    "ckpt": "checkpoints",
    "evaluation": "online evaluation (k-NN probe during pre-training)",
    "hub": "publishing (Hugging Face Hub)",
    "encoder": "encoder (one of)",
    "probes": "probes (at least one)",
    "output": "output",
}


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, config: type[RunConfig]) -> None:
    """One flag per config field, in declaration order, under its group; plus ``--recipe``."""
    parser.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="YAML file of settings (keys are flag names); command-line flags override it",
    )
    groups: dict[str | None, argparse._ActionsContainer] = {None: parser}
    exclusive: dict[str, argparse._ActionsContainer] = {}
    kinds = config.field_types()
    for field in dataclasses.fields(config):
        meta = config.declaration(field.name)
        group = meta.get("group")
        if group not in groups:
            groups[group] = parser.add_argument_group(GROUP_TITLES.get(group, group))
        target = groups[group]
        if meta.get("exclusive"):
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = target.add_mutually_exclusive_group()
            target = exclusive[meta["exclusive"]]
        kind = kinds[field.name]
        options: dict = {"dest": field.name, "default": argparse.SUPPRESS, "help": meta.get("help", "")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction if field.default else "store_true"
        else:
            options.update(type=_FlagType(kind), metavar=meta.get("metavar"))
            options.update(choices=meta.get("choices"))
            if field.default is not None:
                options["help"] += f" (default: {field.default})"
        target.add_argument(flag(field.name), **options)


class _FlagType:
    """argparse's ``type`` for a field of type ``kind``: the parse a recipe's value goes through
    (:func:`parse_value`; argparse checks the choices and names ``__name__`` in its message, ``invalid int
    value: '2.7'``)."""

    def __init__(self, kind: type):
        self.kind, self.__name__ = kind, kind.__name__

    def __call__(self, text: str):
        return parse_value(self.kind, text)


def read_recipe(path: Path, config: type[RunConfig]) -> dict:
    """The recipe file's settings, each converted and checked like its flag."""
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"--recipe {path}: cannot read ({err})") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"--recipe {path}: expected a mapping of flag names to values")
    settings = {str(k).replace("-", "_"): v for k, v in recipe.items()}
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(f"--recipe {path}: unknown key(s) {', '.join(unknown)}")
    settings = {key: value for key, value in settings.items() if value is not None}  # null: the default
    for key, value in settings.items():
        try:
            settings[key] = config.convert(key, value)
        except (TypeError, ValueError) as err:
            raise UsageError(
                f"--recipe {path}: {key.replace('_', '-')}: {value!r} is not valid ({err})"
            ) from None
    return settings


def build_config(config: type[RunConfig], args: argparse.Namespace) -> RunConfig:
    """The frozen config of one run: defaults ← recipe file ← command line."""
    typed = {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)}
    recipe = read_recipe(args.recipe, config) if args.recipe is not None else {}
    try:
        return config.from_mapping({**recipe, **typed})
    except ConfigError as err:
        if err.key in recipe and err.key not in typed:
            raise UsageError(f"--recipe {args.recipe}: {err.key.replace('_', '-')}{err.detail}") from None
        raise


def usage_message(err: ConfigError) -> str:
    """A config fault as the user typed it: ``--mask-ratio 1.5: must be between 0 and 1``."""
    return flag(err.key) + err.detail


@contextlib.contextmanager
def flagged(name: str):
    """For the commands without a run config: inside this block, the library's :class:`InputError` (whose
    message starts with the value) is a usage error of flag ``name``."""
    try:
        yield
    except InputError as err:
        raise UsageError(f"{name} {err}") from None
