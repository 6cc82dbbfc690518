# `make run`: create the environment if missing, generate the default synthetic data and
# train InterFormer on it. `make test`: create the environment if missing, run the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
CONFIG ?= configs/synthetic.yaml

.PHONY: run test env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchrec==1.8.0 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torchrec, fbgemm_gpu, interformer_rec"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/interformer-rec generate --config $(CONFIG)
	$(VENV)/bin/interformer-rec train --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) data/synthetic runs results
