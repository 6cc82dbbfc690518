# `make run`: create the environment if missing, generate the default synthetic data and
# train InterFormer on it. `make test`: create the environment if missing, run the suite,
# one pytest-xdist worker per core, each test file on one worker, heaviest first
# (tests/conftest.py); most of the suite is Python- and compiler-bound at its small
# sizes, so the workers overlap well.
#
# FLAVOR=cpu (the default) or FLAVOR=cuda picks pyproject.toml's extra. The environment
# is installed with uv. cpu: pyproject.toml's [tool.uv] override keeps torchrec's
# requirement on the CUDA `fbgemm-gpu` from replacing `fbgemm-gpu-cpu`, which plain pip
# cannot do; uv does not read pip's configuration, so pip's find-links (a folder of local
# wheels, such as a CPU build of torch) are handed to it. cuda: installed without that
# override (--no-config), torch and fbgemm-gpu from the index (PyPI: CUDA 13.0 builds).
VENV ?= .venv
FLAVOR ?= cpu
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed-$(FLAVOR)-$(shell sha1sum pyproject.toml | cut -c1-12)
CONFIG ?= configs/synthetic.yaml
FIND_LINKS ?= $(shell python3 -m pip config get global.find-links 2>/dev/null)
ifeq ($(FLAVOR),cpu)
UV_FLAGS := $(addprefix --find-links ,$(FIND_LINKS))
OTHER_FBGEMM := fbgemm-gpu
else ifeq ($(FLAVOR),cuda)
UV_FLAGS := --no-config
OTHER_FBGEMM := fbgemm-gpu-cpu
else
$(error FLAVOR=$(FLAVOR): expected cpu or cuda)
endif

.PHONY: run test env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	$(UV) pip uninstall -q --python $(PY) $(OTHER_FBGEMM)  # both install the module fbgemm_gpu
	$(UV) pip install -q --python $(PY) $(UV_FLAGS) -e '.[$(FLAVOR),dev]'
	$(PY) -c "import torchrec, fbgemm_gpu, interformer_rec"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/interformer-rec generate --config $(CONFIG)
	$(VENV)/bin/interformer-rec train --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto tests

clean:
	rm -rf $(VENV) data/synthetic runs results
