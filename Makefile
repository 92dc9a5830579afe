# The two commands a user types on a fresh machine: `make demo` and `make test`.
# Each installs what is missing first (system libraries, .venv, the package), then runs. Idempotent: a second
# run installs nothing (the venv stamp is newer than pyproject.toml and constraints.txt).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
# pkg-config modules the native builds ask for: FFCV 1.0.2's setup.py wants opencv4 (else opencv) and
# libturbojpeg; our crop decoder (setup.py) links libjpeg. "a,b": either module will do.
PC_MODULES := libturbojpeg libjpeg opencv4,opencv
# Package names valid on Debian and on Ubuntu LTS (libjpeg-dev pulls the distribution's libjpeg-turbo).
APT_PACKAGES := pkg-config libturbojpeg0-dev libjpeg-dev libopencv-dev
CONDA_PACKAGES := libjpeg-turbo opencv pkg-config
DEMO_DIR ?= runs/demo
DEMO_EPOCHS ?= 40
PYTEST_ARGS ?=
# The suite runs on PYTEST_WORKERS processes (pytest-xdist); 0 runs it in pytest's own process. Most of its
# time is real runs (accelerate, DeepSpeed, FFCV) starting up, saving and waiting on each other, so two
# workers finish it in about 0.6 of the serial time on a 2-core machine (README, "Tests"). Work goes out a
# unit at a time in collection order (a module's real runs, first, then each quick test: tests/conftest.py),
# so the quick ones fill the end of both workers' time instead of a queue of real runs ending the session
# on one of them.
PYTEST_WORKERS ?= 2

.PHONY: install system-deps demo test lint clean

install: $(STAMP)

# Sets $missing to the PC_MODULES pkg-config does not find (all of them when pkg-config itself is missing).
# Whatever pkg-config sees counts, so conda/spack/module libraries on PKG_CONFIG_PATH pass without root.
PC_CHECK = missing=; for m in $(PC_MODULES); do found=; \
	  for alt in $${m//,/ }; do pkg-config --exists $$alt 2>/dev/null && { found=1; break; }; done; \
	  [ -n "$$found" ] || missing="$$missing $${m//,/ or }"; done

# FFCV and our crop decoder compile against libjpeg-turbo and OpenCV: check them with pkg-config; when
# missing, install them with apt as root, otherwise stop and print both routes (sudo apt-get, conda).
system-deps:
	@$(PC_CHECK); \
	[ -z "$$missing" ] && exit 0; \
	command -v pkg-config >/dev/null || echo "pkg-config is not installed: every library counts as missing"; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "pkg-config did not find:$$missing; installing $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) || exit 1; \
	  $(PC_CHECK); [ -z "$$missing" ] && exit 0; \
	  echo "error: still not found by pkg-config after apt-get install:$$missing"; exit 1; \
	fi; \
	echo "error: pkg-config did not find:$$missing (FFCV and the crop decoder compile against them)"; \
	echo "install them with one of:"; \
	echo "  root, Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES)"; \
	echo "  no root, conda:      conda install -c conda-forge $(CONDA_PACKAGES)"; \
	echo '                       export PKG_CONFIG_PATH=$$CONDA_PREFIX/lib/pkgconfig LD_LIBRARY_PATH=$$CONDA_PREFIX/lib:$$LD_LIBRARY_PATH'; \
	echo "  spack/env modules:   load libjpeg-turbo and opencv, with their lib/pkgconfig on PKG_CONFIG_PATH"; \
	command -v apt-get >/dev/null || echo "(no apt-get here: not Debian/Ubuntu, so use conda/spack/modules or your own package manager)"; \
	[ "$$(id -u)" = 0 ] || echo "(not root: make installs no system packages itself)"; \
	echo "then run make again"; exit 1

$(STAMP): pyproject.toml $(wildcard setup.py) constraints.txt $(wildcard mae_trainer/data/crop_decode/*.c) | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip "setuptools>=68" wheel
	$(PIP) "torch==2.14.1" "torchvision==0.29.1" numpy pkgconfig
	$(PIP) -e ".[dev]"
	touch $@

# A real small pretraining on the embedded photo set: 2 DeepSpeed ZeRO-1 BF16 ranks on the CPU.
demo: install
	$(BIN)/mae-trainer write-dataset --source embedded --output $(DEMO_DIR)/demo.beton --max-resolution 160 --overwrite
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu_2proc.yaml -m mae_trainer pretrain \
	  --data $(DEMO_DIR)/demo.beton --model tiny --resolution 112 --epochs $(DEMO_EPOCHS) --warmup-epochs 4 \
	  --batch-size 32 --blr 5e-3 --num-workers 1 --log-every 8 --recon-every 80 --output-dir $(DEMO_DIR)/model --overwrite
	@echo; echo "demo done:"; \
	  echo "  model:          $(DEMO_DIR)/model  (AutoModelForPreTraining.from_pretrained after 'import mae_trainer')"; \
	  echo "  tensorboard:    $(BIN)/tensorboard --logdir $(DEMO_DIR)/model/tensorboard"; \
	  echo "  reconstruction: $(DEMO_DIR)/model/reconstruction.png (every 80 steps: $(DEMO_DIR)/model/reconstructions/)"

test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check mae_trainer tests benchmarks examples

clean:
	rm -rf runs .pytest_cache
