# Two entry points for a fresh machine (README): `make run` and `make test`.
# Both install first; the install is skipped when nothing it depends on has changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := libusb-1.0-0 libgl1 libegl1 libgomp1
DEMO_DIR := out/demo
# Blender as a Python module, for the tests that import every delivery file in a real client
# (tests/blender_client.py). An environment of its own: bpy 5.0.1 needs numpy < 2 and
# Python 3.11, the project numpy 2.4. About 1 GB; installed in under a minute here.
BLENDER_VENV := .venv-blender
BLENDER_STAMP := $(BLENDER_VENV)/.installed
BPY := bpy==5.0.1

.PHONY: install run test system-packages blender-client

# open3d's import needs these Debian libraries and the glTF validator runs on Node.js;
# installed only when one is missing.
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing system packages:$$missing"; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml constraints.txt package.json package-lock.json
	$(MAKE) system-packages
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	npm ci --no-audit --no-fund   # the Khronos glTF validator
	touch $(STAMP)

install: $(STAMP)

$(BLENDER_STAMP):
	[ -x $(BLENDER_VENV)/bin/python ] || $(PYTHON) -m venv $(BLENDER_VENV)
	$(BLENDER_VENV)/bin/pip install -q $(BPY)
	touch $(BLENDER_STAMP)

blender-client: $(BLENDER_STAMP)

run: install
	$(BIN)/text-to-3d demo --out $(DEMO_DIR)

test: install blender-client
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest
