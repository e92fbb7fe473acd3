# adfactory: `make demo` and `make test` do all set-up on a fresh machine with Python 3.11.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATE ?= $(shell date +%F)
MODELS := data/models
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-all bench bench-e2e bench-gpu lint format models validate clean chromium fonts docs prometheus

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(MODELS)/tiny-sd/model_index.json $(MODELS)/tiny-clip/open_clip_model.safetensors: | $(VENV)/.installed
	$(BIN)/adfactory dev init-tiny $(MODELS)

models: fonts $(VENV)/.installed $(MODELS)/tiny-sd/model_index.json $(MODELS)/tiny-clip/open_clip_model.safetensors

# The nightly job for today on a local Ray cluster, with the embedded tiny model at demo-scale buckets.
demo: fonts models
	$(BIN)/adfactory demo-skus --date $(DATE)
	$(BIN)/adfactory run --date $(DATE) --config data/demo.toml

validate: models
	$(BIN)/adfactory demo-skus --date $(DATE)
	$(BIN)/adfactory validate --date $(DATE) --config data/demo.toml

test: fonts models prometheus chromium
	$(BIN)/pytest -m "not slow" -q

test-all: fonts models chromium prometheus
	$(BIN)/pytest -q

# The review sheet's browser test drives Debian's chromium with Playwright (Playwright's own browser download is
# not used). Installed with apt when missing and apt is there (as root: CI); elsewhere that test skips, saying so.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
	  echo "note: no chromium and no root apt-get: tests/review/test_browser.py will be skipped"

# The visible label's CJK font (provenance.label_font): Debian's fonts-wqy-microhei, installed with apt when missing
# and apt is there (as root: CI). Elsewhere: install it, or point provenance.label_font at a CJK TTF/TTC.
LABEL_FONT := /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
fonts:
	@[ -f $(LABEL_FONT) ] || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-wqy-microhei; } || \
	  echo "note: no $(LABEL_FONT) and no root apt-get: install fonts-wqy-microhei or set provenance.label_font"

# Speed, pixel waste, quantization and memory, side by side in one process (the demo's scaled buckets).
bench: models
	$(BIN)/adfactory dev bench --config data/demo.toml --skus 48 --repeats 2 --soak 200 --json data/output/bench.json

# The whole night (adfactory run --executor local) vs a plain diffusers loop, as processes, at 48 and 200 images.
bench-e2e: models
	$(BIN)/adfactory dev bench --e2e --config data/demo.toml --images 48,200 --json data/output/bench_e2e.json

# The one-command device proof on a GPU machine (docs/performance-gpu-night.md, "The device proof"): set-up, then
# the random full-size SD1.5 + ViT-L-14 built, C, the night with repair off and on, quantization modes with compile,
# within a wall budget; one JSON, docs/bench-gpu-<device>.json. BENCH_GPU_ARGS="--device cpu": the tiny models on a CPU.
bench-gpu: fonts models
	$(BIN)/python -m factory.tools.benchmarks.bench_gpu --quick $(BENCH_GPU_ARGS)

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a broken link or anchor, or a page missing from
# the nav, fails the build (CI runs this too).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(VENV)/.installed
	$(BIN)/ruff check factory tests jobs
	$(BIN)/ruff format --check factory tests jobs

format: $(VENV)/.installed
	$(BIN)/ruff format factory tests jobs
	$(BIN)/ruff check --fix factory tests jobs

clean:
	rm -rf data/output $(MODELS) site

# tests/ops start Debian's prometheus-pushgateway and prometheus on loopback ports (tests/prom_servers.py).
# Installed with apt when missing and apt is there (as root: CI); elsewhere those tests skip, saying so.
prometheus:
	@{ command -v prometheus >/dev/null 2>&1 && command -v prometheus-pushgateway >/dev/null 2>&1; } || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	      prometheus prometheus-pushgateway; } || \
	  echo "note: no prometheus/prometheus-pushgateway and no root apt-get: tests/ops metrics tests will be skipped"
