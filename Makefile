# The two commands a user types on a fresh machine: `make demo` and `make test`.
# Each installs what is missing first (apt packages, .venv, the package), then runs. Idempotent: a second
# run installs nothing (the venv stamp is newer than pyproject.toml and constraints.txt).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
APT_PACKAGES := pkg-config libturbojpeg0-dev libjpeg62-turbo-dev libopencv-dev
DEMO_DIR ?= runs/demo
DEMO_EPOCHS ?= 40
PYTEST_ARGS ?=

.PHONY: install system-deps demo test lint clean

install: $(STAMP)

# FFCV compiles against libturbojpeg and OpenCV; install them with apt when missing.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "error: missing system packages:$$missing"; \
	    echo "run: sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES)"; exit 1; \
	  fi; \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check mae_trainer tests benchmarks examples

clean:
	rm -rf runs .pytest_cache
