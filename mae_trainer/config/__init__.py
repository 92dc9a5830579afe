"""Run configurations: one frozen dataclass per command that trains or evaluates (``PretrainConfig``,
``FinetuneConfig``, ``ProbeConfig``).

Each field is declared once with its default, help text, choices and check; the CLI builds its flags from
these declarations, reads recipe files (YAML, keys = field names with ``-`` or ``_``) against them, and
writes a run's settings back as a recipe with :meth:`RunConfig.to_recipe`. A config is built once and never
changed; values derived from it (the per-rank batch, the resolution schedule, the checkpoint to resume) are
computed from it by the code that needs them.

Bad values raise :class:`ConfigError`, which carries the field's name: the CLI turns it into one line
naming the flag (``--mask-ratio 1.5: must be between 0 and 1``). Nothing here imports torch.

The package: ``declare.py`` (how a setting is declared, parsed and checked), ``pretrain.py`` (the training
commands' shared settings and pre-training's), ``downstream.py`` (fine-tuning's and probing's).
"""

from .declare import ConfigError, RunConfig, about, deepspeed_launched, parse_value, world_size
from .downstream import FinetuneConfig, ProbeConfig
from .pretrain import PretrainConfig, TrainingConfig

__all__ = [
    "ConfigError",
    "FinetuneConfig",
    "PretrainConfig",
    "ProbeConfig",
    "RunConfig",
    "TrainingConfig",
    "about",
    "deepspeed_launched",
    "parse_value",
    "world_size",
]
