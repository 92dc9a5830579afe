"""Where a model folder came from, for its model card: ``OUTPUT/provenance.json``.

Written by the training commands at the start of a fresh run (main process): ``base_model`` (the Hub repo
the run started from, :func:`origin_of` its ``--init-from`` / ``--model``), ``datasets`` (Hub dataset ids
the data came from) and ``license`` (the card's license). A successful push adds ``pushed_to`` (the repo
id it committed to), so a later run started from this local folder can name the repo as its
``base_model``. ``mae-trainer push`` and :func:`mae_trainer.hub.push_to_hub` use these values when no flag
overrides them.

Import-light: no torch; huggingface_hub is imported inside the functions that need it.
"""

from __future__ import annotations

import json
from pathlib import Path

PROVENANCE = "provenance.json"
KEYS = ("base_model", "datasets", "license")


def read_provenance(folder) -> dict:
    """The folder's ``provenance.json`` as a dict; empty when absent or unreadable (nothing is known)."""
    try:
        value = json.loads((Path(folder) / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _publish(folder, record: dict) -> Path:
    from .publish import publish_text

    return publish_text(Path(folder) / PROVENANCE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def write_provenance(
    output_dir, *, base_model: str | None, datasets: list[str] | None, license: str | None
) -> Path:
    """Write ``output_dir/provenance.json`` (atomically) for a fresh run: the given values, None ones
    left out. It replaces an earlier run's record, ``pushed_to`` included (that push was of another
    model)."""
    record = {"base_model": base_model, "datasets": list(datasets) if datasets else None, "license": license}
    return _publish(output_dir, {k: v for k, v in record.items() if v is not None})


def record_push(folder, repo_id: str) -> Path:
    """Add ``pushed_to: repo_id`` to the folder's provenance after a successful push (main process)."""
    return _publish(folder, {**read_provenance(folder), "pushed_to": repo_id})


def _is_repo_id(spec: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def origin_of(spec) -> str | None:
    """The Hub repo a model given as ``spec`` (``--init-from``, ``--model``) comes from: ``spec`` itself
    when it is a Hub repo id (not an existing folder); for a local folder, the repo a push of that folder
    recorded (``pushed_to``); else None."""
    if spec is None:
        return None
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        pushed = read_provenance(path).get("pushed_to") if path.is_dir() else None
        return pushed if isinstance(pushed, str) and pushed else None
    return spec if _is_repo_id(spec) else None


def license_of(spec, *, endpoint: str | None = None, token=None) -> str | None:
    """The ``license`` in the model card metadata (``README.md``) of a local folder or a Hub repo
    (``endpoint`` defaults to ``HF_ENDPOINT``, else the public Hub); for a folder without a card, the
    license its provenance records. None when unknown or on any failure (no card, no network, ...)."""
    if spec is None:
        return None
    spec = str(spec)
    path = Path(spec).expanduser()
    try:
        from huggingface_hub import ModelCard

        if path.exists():
            if not path.is_dir():
                return None
            card = path / "README.md"
            if not card.is_file():
                value = read_provenance(path).get("license")
                return value if isinstance(value, str) and value else None
        elif _is_repo_id(spec):
            from huggingface_hub import hf_hub_download

            card = Path(hf_hub_download(spec, "README.md", endpoint=endpoint, token=token))
        else:
            return None
        value = ModelCard.load(card, ignore_metadata_errors=True).data.license
    except Exception:  # unknown is the answer to every failure: the caller has a default
        return None
    return value if isinstance(value, str) and value else None
