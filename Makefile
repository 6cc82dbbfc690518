# `make run`: create the environment if missing, generate the default synthetic data and
# train InterFormer on it. `make test`: create the environment if missing, run the suite.
#
# The environment is installed with uv: pyproject.toml's [tool.uv] override keeps
# torchrec's requirement on the CUDA `fbgemm-gpu` from replacing `fbgemm-gpu-cpu`, which
# plain pip cannot do. uv does not read pip's configuration, so pip's find-links (a folder
# of local wheels, such as a CPU build of torch) are handed to it.
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
CONFIG ?= configs/synthetic.yaml
FIND_LINKS ?= $(shell python3 -m pip config get global.find-links 2>/dev/null)

.PHONY: run test env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	$(UV) pip install -q --python $(PY) $(addprefix --find-links ,$(FIND_LINKS)) -e '.[dev]'
	$(PY) -c "import torchrec, fbgemm_gpu, interformer_rec"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/interformer-rec generate --config $(CONFIG)
	$(VENV)/bin/interformer-rec train --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) data/synthetic runs results
