"""The one place that turns "a saved model" (a local folder or a Hub repo id) into weights we can trust.

Accepted: our ``save_pretrained`` folders (``model_type`` ``mae_trainer_mae``) and transformers ``vit_mae``
folders (``ViTMAEForPreTraining``, e.g. ``facebook/vit-mae-base`` or what ``mae-trainer push`` uploads),
locally or as Hub repo ids (downloaded into the Hugging Face cache). ``vit_mae`` weights are converted on
load with :func:`vit_mae_as_ours` (the ``vit_mae`` format as data, ``vit_mae_format.py``).

Refused with one line that names the folder and what is wrong (:class:`ModelLoadError`): no folder, no
``config.json``, another ``model_type``, no or truncated safetensors weights, and weights that lack tensors
the model needs (transformers would initialise those at random and only log it).
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

OURS = "mae_trainer_mae"
VIT_MAE = "vit_mae"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
HUB_FILES = ["config.json", "*.safetensors", WEIGHTS_INDEX, "preprocessor_config.json"]
# Tensors a class may start without: the classification head (and its norm) are new when fine-tuning.
NEW_ON_LOAD = {"MAEForImageClassification": ("head.", "fc_norm.")}


class ModelLoadError(InputError):
    """A saved model that cannot be used; the message is one line starting with the folder or repo id."""


@dataclass
class SavedModel:
    """A resolved local folder: ``spec`` as given, the ``folder`` on disk, its ``model_type`` and weights."""

    spec: str
    folder: Path
    model_type: str
    weight_files: list[str]

    @property
    def is_ours(self) -> bool:
        return self.model_type == OURS


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def safetensors_table(path: Path, name: str | None = None) -> dict[str, dict]:
    """The tensor table of a safetensors file, read from its header; ``ModelLoadError`` if the header is
    unreadable or the file is shorter than the header says (a truncated download or copy)."""
    name = name or str(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a header")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {length} does not fit the file")
            header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not a table")
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{name}: not a readable safetensors file ({err})") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ModelLoadError(f"{name}: not a readable safetensors file (bad data_offsets)") from None
    expected = 8 + length + end
    if size < expected:
        raise ModelLoadError(f"{name}: truncated ({size} of {expected} bytes)")
    return tensors


def weight_files(folder: Path) -> list[str]:
    """``[model.safetensors]`` or the index and every shard it names; ``ModelLoadError`` otherwise."""
    if (folder / WEIGHTS).is_file():
        return [WEIGHTS]
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelLoadError(f"{index}: not a safetensors index ({err})") from None
        for shard in shards:
            if Path(shard).name != shard or not (folder / shard).is_file():
                raise ModelLoadError(f"{index}: names shard {shard!r}, which is not a file in {folder}")
        return [WEIGHTS_INDEX, *shards]
    raise ModelLoadError(
        f"{folder}: no {WEIGHTS} (expected a save_pretrained folder with config.json and {WEIGHTS})"
    )


def parameter_count(saved: SavedModel) -> int:
    return sum(
        math.prod(int(d) for d in info.get("shape", []))
        for name in saved.weight_files
        if name.endswith(".safetensors")
        for info in safetensors_table(saved.folder / name).values()
    )


def _download(spec: str, revision: str | None, token, cache_dir, local_files_only: bool) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise ModelLoadError(f"{spec}: no such folder (and not a Hub repo id)") from None
    try:
        return Path(
            snapshot_download(
                spec,
                revision=revision,
                allow_patterns=HUB_FILES,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        )
    except Exception as err:  # every failure of the client (HTTP, connection, offline cache) is one line
        raise ModelLoadError(
            f"{spec}: no such folder, and fetching it from the Hub ({constants.ENDPOINT}) failed "
            f"({_first_line(err)})"
        ) from None


def resolve_saved_model(
    spec,
    *,
    revision: str | None = None,
    token=None,
    cache_dir=None,
    local_files_only: bool = False,
) -> SavedModel:
    """Check a folder (or download a Hub repo) holding our model or a ``vit_mae`` one, weights intact."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{spec}: not a folder (expected a save_pretrained folder)")
        folder = path
    else:
        folder = _download(spec, revision, token, cache_dir, local_files_only)
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{spec}: no config.json (expected a save_pretrained folder of an MAE)")
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{spec}: unreadable config.json ({err})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in (OURS, VIT_MAE):
        raise ModelLoadError(
            f"{spec}: model_type {model_type!r} is not a masked autoencoder "
            f"(expected {OURS!r} or {VIT_MAE!r})"
        )
    files = weight_files(folder)
    for name in files:
        if name.endswith(".safetensors"):
            safetensors_table(folder / name, f"{spec}: {name}" if folder != path else None)
    return SavedModel(spec, folder, model_type, files)


@contextlib.contextmanager
def quiet_transformers():
    """No load report or progress bar from transformers: the loading info is checked here instead, and a
    refusal is one line."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _check_report(cls, spec: str, info: dict) -> None:
    allowed = NEW_ON_LOAD.get(cls.__name__, ())
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(allowed)]
    if missing:
        raise ModelLoadError(
            f"{spec}: the weights lack {len(missing)} tensor(s) {cls.__name__} needs "
            f"({', '.join(sorted(missing)[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        first = mismatched[0][0] if isinstance(mismatched[0], (tuple, list)) else mismatched[0]
        raise ModelLoadError(f"{spec}: {len(mismatched)} tensor(s) have the wrong shape (first: {first})")


def vit_mae_as_ours(saved: SavedModel, folder: Path) -> None:
    """Write our ``MAEForPreTraining`` folder (config and weights) into ``folder`` from a resolved
    ``vit_mae`` one (every tensor present, tables sin-cos): converted as data (``vit_mae_format.py``), so
    that any of our classes then loads it."""
    from safetensors.torch import save_file
    from transformers import ViTMAEForPreTraining

    from .vit_mae_format import mae_config_from_vit_mae, our_state_from_vit_mae

    try:
        with quiet_transformers():
            hf, info = ViTMAEForPreTraining.from_pretrained(saved.folder, output_loading_info=True)
    except Exception as err:
        raise ModelLoadError(f"{saved.spec}: cannot load as vit_mae ({_first_line(err)})") from None
    _check_report(ViTMAEForPreTraining, saved.spec, info)
    try:
        config = mae_config_from_vit_mae(hf.config)
        state = our_state_from_vit_mae(hf.state_dict(), config)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"{saved.spec}: cannot convert from vit_mae ({_first_line(err)})") from None
    config.architectures = ["MAEForPreTraining"]
    config.save_pretrained(folder)
    tensors = {key: value.contiguous() for key, value in state.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_pretrained(cls, spec, *model_args, **kwargs):
    """``cls.from_pretrained`` for our classes: resolve ``spec`` (folder or repo id, ours or ``vit_mae``),
    convert ``vit_mae`` weights, load with transformers, and refuse weights that leave tensors missing."""
    from transformers import PreTrainedModel

    base = PreTrainedModel.from_pretrained.__func__
    want_info = kwargs.pop("output_loading_info", False)
    saved = resolve_saved_model(
        spec,
        revision=kwargs.pop("revision", None),
        token=kwargs.pop("token", None),
        cache_dir=kwargs.pop("cache_dir", None),
        local_files_only=kwargs.pop("local_files_only", False),
    )

    def load(folder):
        try:
            with quiet_transformers():
                return base(cls, folder, *model_args, output_loading_info=True, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ModelLoadError(f"{saved.spec}: cannot load ({_first_line(err)})") from None

    if saved.is_ours:
        model, info = load(saved.folder)
    else:
        with tempfile.TemporaryDirectory(prefix="mae_trainer_vit_mae_") as tmp:
            vit_mae_as_ours(saved, Path(tmp))
            model, info = load(tmp)
    _check_report(cls, saved.spec, info)
    return (model, info) if want_info else model
