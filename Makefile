# Two entry points for a fresh machine (README): `make run` and `make test`.
# Both install first; the install is skipped when nothing it depends on has changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := libusb-1.0-0 libgl1 libegl1 libgomp1
DEMO_DIR := out/demo

.PHONY: install run test system-packages

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

run: install
	$(BIN)/text-to-3d demo --out $(DEMO_DIR)

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest
