"""``import mae_trainer`` is cheap (no torch, no transformers) and still registers our model with
transformers' Auto classes, whichever is imported first. Each case runs in a fresh interpreter: what is
imported is per-process state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, timeout: int = 600) -> dict:
    """Run ``code`` in a fresh interpreter (this repo first on the path, warnings as errors for our
    registration) and return the JSON object it prints last."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-W", "error:mae_trainer could not register:RuntimeWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from mae_trainer import MAEConfig, MAEForPreTraining

    folder = tmp_path_factory.mktemp("lazy") / "model"
    MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32)).save_pretrained(folder)
    return folder


def test_import_mae_trainer_imports_neither_torch_nor_transformers():
    code = """
import json, sys
import mae_trainer
heavy = sorted(m for m in ("torch", "transformers", "timm", "numpy", "ffcv") if m in sys.modules)
print(json.dumps({"heavy": heavy, "version": mae_trainer.__version__}))
"""
    assert run_python(code) == {"heavy": [], "version": "0.1.0"}


LOAD = """
import json, sys
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining
folder = {folder!r}
loaded = {{
    "config": AutoConfig.from_pretrained(folder),
    "model": AutoModel.from_pretrained(folder),
    "pretraining": AutoModelForPreTraining.from_pretrained(folder),
    "classification": AutoModelForImageClassification.from_pretrained(folder, num_labels=3),
}}
names = {{key: type(value).__module__ + "." + type(value).__name__ for key, value in loaded.items()}}
finders = [type(f).__module__ for f in sys.meta_path if type(f).__module__ == "mae_trainer._auto_register"]
print(json.dumps({{"names": names, "finders": finders}}))
"""

OURS = {
    "config": "mae_trainer.modeling.configuration_mae.MAEConfig",
    "model": "mae_trainer.modeling.modeling_mae.MAEModel",
    "pretraining": "mae_trainer.modeling.modeling_mae.MAEForPreTraining",
    "classification": "mae_trainer.modeling.modeling_mae.MAEForImageClassification",
}


@pytest.mark.parametrize(
    "before",
    [
        "",
        "import transformers",
        "from transformers import AutoConfig",
        "from transformers import AutoModel",
    ],
    ids=["mae_trainer-first", "import-transformers-first", "AutoConfig-first", "AutoModel-first"],
)
def test_auto_classes_load_our_model_whichever_is_imported_first(saved_model, before):
    """``AutoConfig``/``AutoModel``/``AutoModelForPreTraining``/``AutoModelForImageClassification`` load our
    classes after ``import mae_trainer``, with transformers imported before or after it, and the import
    hook has left ``sys.meta_path`` once both Auto modules are imported."""
    code = f"{before}\nimport mae_trainer\n" + LOAD.format(folder=str(saved_model))
    assert run_python(code) == {"names": OURS, "finders": []}


def test_auto_config_alone_registers_the_config_without_importing_the_models(saved_model):
    code = f"""
import json, sys
import mae_trainer
from transformers import AutoConfig
config = AutoConfig.from_pretrained({str(saved_model)!r})
print(json.dumps({{
    "config": type(config).__name__,
    "models_imported": "mae_trainer.modeling.modeling_mae" in sys.modules or "timm" in sys.modules,
}}))
"""
    assert run_python(code) == {"config": "MAEConfig", "models_imported": False}


def test_names_are_importable_from_the_package():
    code = textwrap.dedent("""
        import json
        from mae_trainer import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel
        from mae_trainer.modeling import PRESETS, MAEConfig as Again
        import mae_trainer
        assert Again is MAEConfig and {"MAEConfig", "MAEModel"} <= set(dir(mae_trainer))
        missing = []
        for module in (mae_trainer, mae_trainer.modeling):
            try:
                module.NotAName
            except AttributeError as error:
                missing.append(str(error))
        print(json.dumps({
            "config": MAEConfig.from_preset("tiny").model_type,
            "classes": [c.__name__ for c in (MAEForImageClassification, MAEForPreTraining, MAEModel)],
            "presets": "tiny" in PRESETS,
            "missing": missing,
        }))
    """)
    assert run_python(code) == {
        "config": "mae_trainer_mae",
        "classes": ["MAEForImageClassification", "MAEForPreTraining", "MAEModel"],
        "presets": True,
        "missing": [
            f"module '{name}' has no attribute 'NotAName'" for name in ("mae_trainer", "mae_trainer.modeling")
        ],
    }


FFCV_MODES = """
import json, sys, time
import mae_trainer  # puts the _lean_imports finder on sys.meta_path
import numba.typed
typed = numba.typed.Dict
start = time.perf_counter()
import ffcv
from ffcv.fields.rgb_image import IMAGE_MODES
seconds = time.perf_counter() - start
print(json.dumps({
    "modes": dict(IMAGE_MODES), "plain": type(IMAGE_MODES) is dict,
    "dict_restored": numba.typed.Dict is typed, "seconds": seconds,
}))
"""


def test_ffcv_imports_without_compiling_a_typed_dict_for_its_image_modes():
    got = run_python(FFCV_MODES)
    assert got["modes"] == {"jpg": 0, "raw": 1} and got["plain"] and got["dict_restored"]
    # (the typed dict compiled numba's dict and string code: 3-4 s; no bound on got["seconds"] here, which
    # swings with the machine's load)


def test_lean_imports_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MAE_TRAINER_LEAN_IMPORTS", "0")
    got = run_python(FFCV_MODES)
    assert got["modes"] == {"jpg": 0, "raw": 1} and not got["plain"] and got["dict_restored"]


def test_timm_imports_without_wandb_which_imports_as_usual_afterwards():
    code = """
import json, sys
import mae_trainer
from timm.optim import param_groups_weight_decay
from mae_trainer.modeling import MAEForPreTraining
after_timm = "wandb" in sys.modules
import wandb, timm.utils.summary
finders = [type(f).__module__ for f in sys.meta_path if type(f).__module__ == "mae_trainer._lean_imports"]
print(json.dumps({"after_timm": after_timm, "wandb": wandb.__name__, "finders": finders,
                  "summary_wandb": hasattr(timm.utils.summary, "wandb")}))
"""
    pytest.importorskip("wandb")
    got = run_python(code)
    # timm's step is done; the finder stays on sys.meta_path for FFCV, which neither line imports
    assert got == {
        "after_timm": False,
        "wandb": "wandb",
        "finders": ["mae_trainer._lean_imports"],
        "summary_wandb": False,
    }
