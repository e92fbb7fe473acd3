# adfactory: `make demo` and `make test` do all set-up on a fresh machine with Python 3.11.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATE ?= $(shell date +%F)
MODELS := data/models
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-all bench bench-e2e lint format models validate clean chromium prometheus

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(MODELS)/tiny-sd/model_index.json $(MODELS)/tiny-clip/open_clip_model.safetensors: | $(VENV)/.installed
	$(BIN)/adfactory dev init-tiny $(MODELS)

models: $(VENV)/.installed $(MODELS)/tiny-sd/model_index.json $(MODELS)/tiny-clip/open_clip_model.safetensors

# The nightly job for today on a local Ray cluster, with the embedded tiny model at demo-scale buckets.
demo: models
	$(BIN)/adfactory demo-skus --date $(DATE)
	$(BIN)/adfactory run --date $(DATE) --config data/demo.toml

validate: models
	$(BIN)/adfactory demo-skus --date $(DATE)
	$(BIN)/adfactory validate --date $(DATE) --config data/demo.toml

test: models prometheus chromium
	$(BIN)/pytest -m "not slow" -q

test-all: models chromium prometheus
	$(BIN)/pytest -q

# The review sheet's browser test drives Debian's chromium with Playwright (Playwright's own browser download is
# not used). Installed with apt when missing and apt is there (as root: CI); elsewhere that test skips, saying so.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
	  echo "note: no chromium and no root apt-get: tests/review/test_browser.py will be skipped"

# Speed, pixel waste, quantization and memory, side by side in one process (the demo's scaled buckets).
bench: models
	$(BIN)/adfactory dev bench --config data/demo.toml --skus 48 --repeats 2 --soak 200 --json data/output/bench.json

# The whole night (adfactory run --executor local) vs a plain diffusers loop, as processes, at 48 and 200 images.
bench-e2e: models
	$(BIN)/adfactory dev bench --e2e --config data/demo.toml --images 48,200 --json data/output/bench_e2e.json

lint: $(VENV)/.installed
	$(BIN)/ruff check factory tests jobs
	$(BIN)/ruff format --check factory tests jobs

format: $(VENV)/.installed
	$(BIN)/ruff format factory tests jobs
	$(BIN)/ruff check --fix factory tests jobs

clean:
	rm -rf data/output $(MODELS)

# tests/ops start Debian's prometheus-pushgateway and prometheus on loopback ports (tests/prom_servers.py).
# Installed with apt when missing and apt is there (as root: CI); elsewhere those tests skip, saying so.
prometheus:
	@{ command -v prometheus >/dev/null 2>&1 && command -v prometheus-pushgateway >/dev/null 2>&1; } || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	      prometheus prometheus-pushgateway; } || \
	  echo "note: no prometheus/prometheus-pushgateway and no root apt-get: tests/ops metrics tests will be skipped"
