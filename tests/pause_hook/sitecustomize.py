"""Test-only hooks for launched runs: stop a child process for good at one exact point of a checkpoint save,
or start one rank late; and skip the shutdown collections of every process the tests start.

``tests/conftest.py`` puts this folder first on ``PYTHONPATH`` for the whole session, so every Python
process the tests start (launcher, torchrun's agent, ranks, ``mae-trainer`` commands, plain scripts) reads
this file at start-up. A ``sitecustomize`` this one shadows (a distribution's) still runs.

Always: :func:`gc.freeze` as the process's last atexit handler. ``mae-trainer`` does this itself once its
command is done (``cli.entry``); the launcher is accelerate's, and its interpreter shutdown walks the
objects of torch, accelerate and the Hub client in full collections, about 1.5 s of every launch (README,
"Tests"). Handlers, module teardown and reference-counted finalizers run as usual.

``MAE_TRAINER_TEST_PAUSE`` (``tests/conftest.py:pause_env``): ``os.replace(src, dst)`` with ``dst`` the
configured target creates the marker file and then sleeps forever, just ``"before"`` or just ``"after"`` the
replace (a checkpoint is published by ``os.replace(step_N.tmp, step_N)``). The test waits for the marker and
kills the process tree: the kill lands at exactly that point however slow the machine is, instead of
whenever a polling loop happens to notice a file. With ``until`` set, the process goes on once that file
exists instead (the test does something at that point, e.g. fills the disk, then lets the run continue).

``MAE_TRAINER_TEST_START_DELAY`` (``tests/conftest.py:start_delay_env``): the worker with the given global
``RANK`` sleeps that many seconds before anything else (a node slow to start, e.g. importing on a loaded
machine), after appending ``pid seconds`` to the marker file. Only torchrun's workers carry
``TORCHELASTIC_RESTART_COUNT``: the launcher and torchrun's agent start on time.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time


def _pause(marker: str, until: str | None) -> None:
    with open(marker, "w") as f:
        f.write(f"{os.getpid()}\n")
    while until is None:  # until the test kills us
        time.sleep(3600)
    while not os.path.exists(until):  # until the test lets us go on
        time.sleep(0.05)


def _install(config: dict) -> None:
    target, when, marker = os.path.abspath(config["target"]), config["when"], config["marker"]
    until = config.get("until")
    replace = os.replace

    def pausing_replace(src, dst, *args, **kwargs):
        hit = os.path.abspath(os.fsdecode(dst)) == target
        if hit and when == "before":
            _pause(marker, until)
        replace(src, dst, *args, **kwargs)
        if hit and when == "after":
            _pause(marker, until)

    os.replace = pausing_replace


def _delay_start(config: dict) -> None:
    if "TORCHELASTIC_RESTART_COUNT" in os.environ and os.environ.get("RANK") == str(config["rank"]):
        with open(config["marker"], "a") as f:
            f.write(f"{os.getpid()} {config['seconds']}\n")
        time.sleep(config["seconds"])


def _run_shadowed() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


atexit.register(gc.freeze)  # registered first: runs last
if os.environ.get("MAE_TRAINER_TEST_PAUSE"):
    _install(json.loads(os.environ["MAE_TRAINER_TEST_PAUSE"]))
if os.environ.get("MAE_TRAINER_TEST_START_DELAY"):
    _delay_start(json.loads(os.environ["MAE_TRAINER_TEST_START_DELAY"]))
_run_shadowed()
