"""``make install`` on a GPU host without root: the ``system-deps`` target that it runs first.

``system-deps`` is the only step of ``make install`` that can need root (the rest creates ``.venv`` and
pip-installs into it, both inside the checkout), so it is what these tests run, as a non-root user
(``nobody`` through ``setpriv`` when the tests run as root) on a copy of the Makefile. The whole ``make
install`` (minutes of pip) is not run here: ``test_install_runs_system_deps`` checks that its real path
still goes through this target. ``apt-get``, ``apt``, ``sudo`` and ``dpkg`` are shadowed on ``PATH`` by
scripts that only record that they were called: no test installs anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
NOBODY = 65534
SPIED = ("apt-get", "apt", "sudo", "dpkg")

APT_LINE = (
    "sudo apt-get update && sudo apt-get install -y pkg-config libturbojpeg0-dev libjpeg-dev libopencv-dev"
)
CONDA_LINE = "conda install -c conda-forge libjpeg-turbo opencv pkg-config"
CONDA_PATH = "PKG_CONFIG_PATH=$CONDA_PREFIX/lib/pkgconfig"

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def pkg_config_has(*modules: str) -> bool:
    return shutil.which("pkg-config") is not None and all(
        subprocess.run(["pkg-config", "--exists", m], env=clean_env()).returncode == 0 for m in modules
    )


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without its own pkg-config search paths, plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR", "MAKEFLAGS")
    }
    return {**env, **extra}


def as_non_root(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")  # absolute: some tests run with a PATH that lacks it
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: no way to drop to nobody")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]


@pytest.fixture
def work():
    """A directory every user can read (pytest's tmp_path is private to root): the Makefile copy, a bin
    directory of spies for the package tools, and their log (writable by nobody)."""
    base = Path(tempfile.mkdtemp(prefix="mae-install-"))
    base.chmod(0o755)
    shutil.copy(ROOT / "Makefile", base / "Makefile")
    spies = base / "spies"
    spies.mkdir()
    log = base / "logs" / "calls.log"
    log.parent.mkdir()
    log.parent.chmod(0o777)
    for name in SPIED:
        script = spies / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        script.chmod(0o755)
    yield base, spies, log
    shutil.rmtree(base)


def system_deps(work, env: dict[str, str], root: bool = False, path: str | None = None):
    base, spies, _ = work
    env = {**env, "PATH": f"{spies}:{path if path is not None else os.environ['PATH']}", "LC_ALL": "C"}
    cmd = [MAKE, "--no-print-directory", "-C", str(base), "system-deps"]
    return subprocess.run(
        cmd if root else as_non_root(cmd), capture_output=True, text=True, timeout=60, env=env
    )


def spied_calls(work) -> str:
    log = work[2]
    return log.read_text() if log.exists() else ""


def write_pc(folder: Path, *modules: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    for m in modules:
        (folder / f"{m}.pc").write_text(
            f"prefix=/opt/fake\nName: {m}\nDescription: stand-in\nVersion: 4.0\n"
            f"Libs: -L${{prefix}}/lib -l{m}\nCflags: -I${{prefix}}/include\n"
        )


@pytest.mark.skipif(
    not (
        pkg_config_has("libturbojpeg", "libjpeg") and (pkg_config_has("opencv4") or pkg_config_has("opencv"))
    ),
    reason="libturbojpeg, libjpeg and OpenCV are not all visible to pkg-config on this host",
)
def test_non_root_with_libraries_present_succeeds_and_installs_nothing(work):
    out = system_deps(work, clean_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "error" not in out.stdout + out.stderr
    assert spied_calls(work) == ""


@pytest.mark.parametrize("opencv", ["opencv4", "opencv"])
def test_non_root_with_a_conda_like_prefix_on_pkg_config_succeeds(work, opencv):
    """The conda/spack/modules route: only what a prefix's lib/pkgconfig declares is visible."""
    pc = work[0] / "prefix" / "lib" / "pkgconfig"
    write_pc(pc, "libturbojpeg", "libjpeg", opencv)
    empty = work[0] / "empty"
    write_pc(empty)
    out = system_deps(work, clean_env(PKG_CONFIG_LIBDIR=str(empty), PKG_CONFIG_PATH=str(pc)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert spied_calls(work) == ""


def test_non_root_with_nothing_found_fails_with_both_routes(work):
    empty = work[0] / "empty"
    write_pc(empty)
    out = system_deps(work, clean_env(PKG_CONFIG_LIBDIR=str(empty), PKG_CONFIG_PATH=str(empty)))
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "pkg-config did not find: libturbojpeg libjpeg opencv4 or opencv" in text
    assert APT_LINE in text
    assert CONDA_LINE in text and CONDA_PATH in text
    assert "not root" in text
    assert spied_calls(work) == ""


def test_non_root_names_only_what_is_missing(work):
    pc = work[0] / "pc"
    write_pc(pc, "opencv4", "libjpeg")
    out = system_deps(work, clean_env(PKG_CONFIG_LIBDIR=str(pc)))
    assert out.returncode != 0
    assert "pkg-config did not find: libturbojpeg (" in out.stdout
    assert spied_calls(work) == ""


def test_without_pkg_config_or_apt_everything_counts_as_missing(work):
    """A host with neither pkg-config nor apt-get (not Debian/Ubuntu): both facts are said."""
    tools = work[0] / "tools"
    tools.mkdir()
    tools.chmod(0o755)
    (tools / "id").symlink_to(shutil.which("id"))
    spies = work[1]
    for name in SPIED:  # no apt-get on this host at all
        (spies / name).unlink()
    out = system_deps(work, clean_env(), path=str(tools))
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "pkg-config is not installed" in text
    assert "pkg-config did not find: libturbojpeg libjpeg opencv4 or opencv" in text
    assert "no apt-get here" in text
    assert APT_LINE in text and CONDA_LINE in text


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt route is taken as root only")
def test_root_installs_the_apt_packages_then_checks_again(work):
    """As root with nothing found, the target calls apt-get (a spy here, so nothing is installed) with the
    names valid on Debian and Ubuntu, then asks pkg-config again; the spy installed nothing, so it fails."""
    empty = work[0] / "empty"
    write_pc(empty)
    out = system_deps(work, clean_env(PKG_CONFIG_LIBDIR=str(empty), PKG_CONFIG_PATH=str(empty)), root=True)
    calls = spied_calls(work).splitlines()
    assert calls == [
        "apt-get update -qq",
        "apt-get install -y -qq pkg-config libturbojpeg0-dev libjpeg-dev libopencv-dev",
    ]
    assert out.returncode != 0
    assert "still not found by pkg-config after apt-get install: libturbojpeg libjpeg" in out.stdout


@pytest.mark.parametrize("target", ["install", "demo"])
def test_install_runs_system_deps(target):
    """``make install`` (and ``make demo``, through it) still goes through the pkg-config check first."""
    out = subprocess.run(
        [MAKE, "--no-print-directory", "-n", "-C", str(ROOT), target],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    check = out.stdout.find("pkg-config --exists")
    assert check != -1, out.stdout
    later = [out.stdout.find(s) for s in ("pip install", "mae-trainer write-dataset") if s in out.stdout]
    assert all(i > check for i in later)
