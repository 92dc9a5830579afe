"""Publish a saved model folder to the Hugging Face Hub (``mae-trainer push``, ``pretrain --push-to-hub``).

Two kinds of folder, told apart by their ``config.json``:

- a pre-trained MAE (our ``save_pretrained`` folder or a ``vit_mae`` one), read with the one loader
  (``modeling/loading.py``: weights checked and loaded);
- a fine-tuned classifier (our ``MAEForImageClassification`` save, ``architectures:
  ["MAEForImageClassification"]``, with ``results.json`` from ``mae-trainer finetune``).

One commit uploads, for ``--format transformers`` (the default; ``vit_mae`` is the same choice under its
old name): files plain transformers loads without this package: a pre-trained MAE as ``vit_mae``
(``ViTMAEForPreTraining``, ``ViTModel``, ``ViTForImageClassification``), a classifier as
``BeitForImageClassification`` (mean-pool head) or ``ViTForImageClassification`` (class-token head,
``convert.to_transformers_classifier``); for ``--format mae_trainer``: our ``config.json`` and safetensors
weights as they are (loading needs ``import mae_trainer``). Both add ``reconstruction.png`` when present, a
``preprocessor_config.json`` that makes ``AutoImageProcessor`` prepare images as our evaluation does
(``convert.image_processor``) and a model card ``README.md`` (from the config, ``metrics.jsonl``,
``results.json``, ``resolved_config.yaml`` and ``provenance.json``: ``base_model``, ``datasets``,
``license``; written by :mod:`mae_trainer.cards`). Nothing else in the folder (``checkpoints/``,
``tensorboard/``, ...) is sent. After the commit the folder's ``provenance.json`` records ``pushed_to``
(:mod:`mae_trainer.provenance`).

The card declares ``library_name: transformers``: the Hub keys its library filter and "Use this model"
snippet on it and only knows registered libraries; the ``mae_trainer`` tag marks our models. Its
``pipeline_tag`` is a promise that ``transformers.pipeline(TAG, model=REPO)`` works: a classifier in
transformers format gets ``image-classification``. A pre-trained MAE gets none: transformers builds
``ViTMAEModel`` for ``image-feature-extraction``, which shuffles the patch tokens and hides
``mask_ratio`` of them at random on every call (even at ``mask_ratio`` 0 the order is shuffled), so
that pipeline would return random features; the card shows ``ViTModel`` for deterministic features.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .cards import (
    DEFAULT_FORMAT,
    METRICS,
    RECONSTRUCTION,
    build_classifier_card,
    build_model_card,
    card_metadata,
    image_processor_json,
    read_metrics,
    read_recipe,
    read_results,
)
from .errors import InputError

DEFAULT_COMMIT_MESSAGE = "Upload model trained with mae_trainer"
# "transformers" (default): plain transformers loads the repo; "vit_mae" is its former name, kept
FORMATS = ("transformers", "vit_mae", "mae_trainer")
CLASSIFIER_ARCHITECTURE = "MAEForImageClassification"


def folder_kind(model_dir: Path) -> str:
    """``"classifier"`` for a fine-tuned ``MAEForImageClassification`` save, else ``"pretrained"`` (an MAE,
    ours or ``vit_mae``; the loader refuses anything else)."""
    try:
        raw = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "pretrained"  # the loader names what is wrong
    architectures = raw.get("architectures") if isinstance(raw, dict) else None
    return "classifier" if CLASSIFIER_ARCHITECTURE in (architectures or []) else "pretrained"


def _load(cls, saved, *, complete: bool):
    try:
        model, info = cls.from_pretrained(saved.folder, output_loading_info=True)
    except InputError as err:  # ModelLoadError, naming the folder
        err.argument = "model_dir"
        raise
    if complete and info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise InputError(
            f"{saved.spec}: the weights lack {', '.join(missing[:3])}: not a fine-tuned {cls.__name__}",
            "model_dir",
        )
    return model


def collect_files(
    model_dir: Path,
    repo_id: str,
    staging: Path,
    *,
    format: str = DEFAULT_FORMAT,
    license: str | None = None,
    datasets: list[str] | None = None,
    revision: str | None = None,
) -> dict[str, Path | bytes]:
    """Every file one push sends, path in the repo → local file (``Path``) or generated content (``bytes``).

    ``model_dir`` is a pre-trained MAE (read with the one loader: our folder or a ``vit_mae`` one) or a
    fine-tuned classifier (:func:`folder_kind`); the weights are loaded, so missing or truncated ones are
    refused here; converted weights are written under ``staging``. ``license`` None: the folder's
    provenance, else the default. Raises ``InputError`` (``argument`` ``"model_dir"``) naming the folder
    when it cannot be used."""
    from .modeling.loading import resolve_saved_model

    if format not in FORMATS:
        raise InputError(f"{format!r}: choose {' or '.join(FORMATS)}", "format")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory (expected a save_pretrained folder)", "model_dir")
    try:
        saved = resolve_saved_model(model_dir)
    except InputError as err:
        err.argument = "model_dir"
        raise
    license, datasets, base_model = card_metadata(model_dir, license, datasets)
    if folder_kind(model_dir) == "classifier" and saved.is_ours:
        return _classifier_files(
            model_dir, saved, repo_id, staging, format, license, datasets, base_model, revision
        )
    from .modeling import MAEForPreTraining
    from .modeling.convert import write_vit_mae

    model = _load(MAEForPreTraining, saved, complete=False)
    config = model.config
    if format == "mae_trainer" and saved.is_ours:
        source, weight_files = model_dir, saved.weight_files  # byte for byte what pre-training saved
    elif format == "mae_trainer":
        model.save_pretrained(staging)
        source, weight_files = staging, ["model.safetensors"]
    else:
        write_vit_mae(model, staging)
        source, weight_files = staging, ["model.safetensors"]
    metrics = model_dir / METRICS
    records = read_metrics(metrics) if metrics.is_file() else []
    has_picture = (model_dir / RECONSTRUCTION).is_file()

    files: dict[str, Path | bytes] = {"config.json": source / "config.json"}
    files.update({name: source / name for name in weight_files})
    files["preprocessor_config.json"] = image_processor_json(config)
    if has_picture:
        files[RECONSTRUCTION] = model_dir / RECONSTRUCTION
    files["README.md"] = build_model_card(
        config,
        repo_id,
        records=records,
        license=license,
        datasets=datasets,
        revision=revision,
        parameters=sum(p.numel() for p in model.parameters()),
        reconstruction=has_picture,
        format="mae_trainer" if format == "mae_trainer" else "vit_mae",
        base_model=base_model,
    ).encode()
    return files


def _classifier_files(model_dir, saved, repo_id, staging, format, license, datasets, base_model, revision):
    from .modeling import MAEForImageClassification
    from .modeling.convert import write_transformers_classifier

    model = _load(MAEForImageClassification, saved, complete=True).eval()
    config = model.config
    if format == "mae_trainer":
        source, weight_files, architecture = model_dir, saved.weight_files, CLASSIFIER_ARCHITECTURE
    else:
        write_transformers_classifier(model, staging)
        source, weight_files = staging, ["model.safetensors"]
        architecture = json.loads((staging / "config.json").read_text())["architectures"][0]
    metrics = model_dir / METRICS
    files: dict[str, Path | bytes] = {"config.json": source / "config.json"}
    files.update({name: source / name for name in weight_files})
    files["preprocessor_config.json"] = image_processor_json(config)
    files["README.md"] = build_classifier_card(
        config,
        repo_id,
        results=read_results(model_dir),
        recipe=read_recipe(model_dir),
        records=read_metrics(metrics) if metrics.is_file() else [],
        license=license,
        datasets=datasets,
        base_model=base_model,
        revision=revision,
        architecture=architecture,
        format=format,
    ).encode()
    return files


# --------------------------------------------------------------------------------------------- pushing


def resolve_token(token: str | None) -> str:
    """``token``, else ``HF_TOKEN``, else the token saved by ``hf auth login``; ``InputError`` (``argument``
    ``"token"``) if none."""
    token = token or os.environ.get("HF_TOKEN") or None
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise InputError(
            "no Hugging Face token: none given, no HF_TOKEN environment variable and no saved login "
            "(hf auth login); a write token comes from https://huggingface.co/settings/tokens",
            "token",
        )
    return token


def check_endpoint(endpoint: str | None) -> str | None:
    """The Hub URL to talk to: ``endpoint``, else ``HF_ENDPOINT``, else None (the public Hub), without a
    trailing ``/``. ``InputError`` (``argument`` ``"endpoint"``) starting with the value when it is not an
    ``http(s)://`` URL with a valid host (and port), before any request."""
    from urllib.parse import urlsplit

    value = endpoint or os.environ.get("HF_ENDPOINT") or ""
    url = value.rstrip("/")
    if not url:
        return None
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number in 0..65535 raises here
    except ValueError as err:
        problem = f"not a URL ({err})"
    else:
        if parts.scheme not in ("http", "https"):
            problem = "not an http:// or https:// URL"
        elif not parts.hostname:
            problem = "no host name"
        elif any(c.isspace() for c in url):
            problem = "white space in the URL"
        elif parts.query or parts.fragment:
            problem = "has a ?query or #fragment"
        else:
            try:
                parts.hostname.rstrip(".").encode("idna")
            except UnicodeError:
                problem = f"host name {parts.hostname!r} is not valid"
    if problem is not None:
        raise InputError(
            f"{value!r}: {problem} (expected a Hub URL such as https://huggingface.co)", "endpoint"
        )
    return url


def push_to_hub(
    model_dir: Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    license: str | None = None,
    datasets: list[str] | None = None,
    format: str = DEFAULT_FORMAT,
) -> str:
    """Upload a saved model folder to ``repo_id`` in one commit and return the commit URL: a pre-trained MAE
    (our folder or a ``vit_mae`` one) or a fine-tuned classifier (our ``MAEForImageClassification`` save),
    told apart by the folder's config. ``format`` ``transformers`` (or its old name ``vit_mae``): plain
    transformers loads the repo (``vit_mae``; a classifier as BEiT or ViT); ``mae_trainer``: our own files.

    The card's ``license`` defaults to the folder's ``provenance.json``, else apache-2.0; ``datasets`` are
    added to the provenance's. After the commit the folder's provenance records ``pushed_to`` (the repo id).

    Creates the repo if needed (``private`` only applies to a new repo) and, for a ``revision`` other than
    ``main``, the branch (from ``main``'s head). ``endpoint`` defaults to ``HF_ENDPOINT``, else the
    public Hub.

    Bad input raises ``InputError`` before any request, its ``argument`` naming the parameter at fault
    (``model_dir``, ``repo_id``, ``token``, ``endpoint``, ``format``); so do an endpoint that cannot be
    reached and a token the Hub refuses.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InputError(f"{repo_id!r}: not a repo id ({err})", "repo_id") from None
    endpoint = check_endpoint(endpoint)
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="mae_trainer_push_") as staging:
        files = collect_files(
            Path(model_dir),
            repo_id,
            Path(staging),
            format=format,
            license=license,
            datasets=datasets,
            revision=revision,
        )  # input errors before any request
        info, repo_id = _commit(files, repo_id, token, private, revision, endpoint, commit_message)
    _record_push(Path(model_dir), repo_id)
    return info.commit_url


def _record_push(model_dir: Path, repo_id: str) -> None:
    """``pushed_to`` in the folder's provenance; a folder that cannot be written only warns (the push is
    done)."""
    import warnings

    from .provenance import record_push

    try:
        record_push(model_dir, repo_id)
    except OSError as err:
        warnings.warn(
            f"{model_dir}: pushed, but could not record it in provenance.json ({err})", stacklevel=2
        )


def _commit(files, repo_id, token, private, revision, endpoint, commit_message):
    """Create the repo (and branch) if needed and send ``files`` in one ``create_commit``."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        try:
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        except Exception as err:
            # httpx (huggingface_hub >= 1.0) or requests (older): no connection at all is bad input
            names = {c.__name__ for c in type(err).__mro__}
            if names & {"ConnectError", "ConnectionError"}:
                raise InputError(f"{api.endpoint}: cannot connect ({err})", "endpoint") from None
            if names & {"UnsupportedProtocol", "InvalidURL", "InvalidSchema", "MissingSchema"}:
                raise InputError(f"{api.endpoint}: not a usable URL ({err})", "endpoint") from None
            raise
        repo_id = repo_url.repo_id or repo_id  # "name" alone lands in the token owner's namespace
        if revision and revision != "main" and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src) for p, src in files.items()]
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message,
            revision=revision,
            repo_type="model",
        )
        return info, repo_id
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise InputError(
                f"the Hub at {api.endpoint} refused the token for {repo_id} (HTTP {status}): it needs write "
                "access",
                "token",
            ) from None
        raise


# ------------------------------------------------------------------------------ the training commands


def check_push(config) -> None:
    """A training run's ``--push-to-hub`` settings, checked before any work (the repo id, a token, the
    endpoint): ``ConfigError`` naming the flag, not a failure after a day of training."""
    if not config.push_to_hub:
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from .config import ConfigError, about

    try:
        validate_repo_id(config.push_to_hub)
    except HFValidationError as err:
        raise ConfigError("push_to_hub", repr(config.push_to_hub), str(err)) from None
    with about("hub_token"):
        resolve_token(config.hub_token)
    with about("hub_endpoint"):
        check_endpoint(config.hub_endpoint)


def push_run(config, folder: Path) -> str:
    """Upload a training run's saved ``folder`` to ``--push-to-hub`` with the run's Hub settings (license
    None: the run's provenance, else the default); returns the commit URL."""
    return push_to_hub(
        folder,
        config.push_to_hub,
        token=config.hub_token,
        private=config.hub_private,
        revision=config.hub_revision,
        endpoint=config.hub_endpoint,
        license=config.hub_license,
        datasets=config.dataset_names,
    )
