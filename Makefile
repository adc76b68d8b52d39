# The two commands a newcomer needs: `make up` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
# One venv per interpreter: .venv for the default, .venv-python3.13 for `make test PYTHON=python3.13`.
VENV ?= $(if $(filter python3.11,$(notdir $(PYTHON))),.venv,.venv-$(notdir $(PYTHON)))
BIN := $(VENV)/bin
# pyenv's shims answer only for its active versions: another one installed there is found by name.
PYTHON_EXE = $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null || \
	ls -d "$$(pyenv root 2>/dev/null)"/versions/$(patsubst python%,%,$(notdir $(PYTHON))).*/bin/$(notdir $(PYTHON)) \
	2>/dev/null | tail -1)
STAMP := $(VENV)/.installed
# Hashed, universal locks for Python 3.11-3.13 (`make lock`): the image installs the first, we the second.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
LOCK_FLAGS ?=
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--quiet $(LOCK_FLAGS)

.PHONY: up test test-fast install lint format bench soak bench-e2e clean lock

# The locked dependencies, then the project itself without resolving anything again.
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON_EXE) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# After changing pyproject.toml's dependencies; `make lock LOCK_FLAGS=--upgrade` moves every
# transitive pin to its newest allowed release. Needs only uv (the venv may not install before it).
$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON_EXE) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep -o '"uv==[0-9.]*"' pyproject.toml | tr -d '"')"

lock: $(BIN)/uv
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -c $(LOCK) -o $(DEV_LOCK)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/batchman up

# Two workers (pytest-xdist), one per core; a file's tests stay on one worker, so its module fixtures
# start once. Every test has its own database, queues and ports (tests/conftest.py's free_port gives
# each worker its own port range).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The inner loop: everything but the tests that start real service processes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not process and not soak"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

# The whole stack as `make up` starts it, 200,000 requests with the simulator's faults on (minutes;
# not in `make test`). Needs RabbitMQ (RABBITMQ_URL) and uses TEST_DATABASE_URL's Postgres if set.
soak: $(STAMP)
	$(BIN)/python -m bench soak
	$(BIN)/python -m pytest -m soak

# The same harness without faults: four bulk calls, where the time goes, exactly once.
bench-e2e: $(STAMP)
	$(BIN)/python -m bench soak_e2e

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
