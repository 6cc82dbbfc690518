"""How `make test` spreads the suite over its pytest-xdist workers (`-n auto`).

Each test file runs on one worker, as with `--dist loadfile`, with two changes, both for
the suite's wall time on a few cores:

* Files that share an expensive build run on one worker, one after the other:
  :data:`SAME_WORKER`. test_serve.py serves the package test_export.py compiles (an
  AOTInductor compile, about a minute); on two workers at once one of them would sit on
  the build's file lock. The two distributed files share the rank fork server, which
  imports torchrec once (``dist_helpers.start_ranks``).
* The heaviest work goes first (:data:`HEAVIEST_FIRST`, measured with ``--durations``),
  so that the many small files fill in at the end and the workers finish together.
  xdist would otherwise order files by their number of tests.

It also holds the fixtures several files use (:func:`one_thread`).
"""

from __future__ import annotations

from typing import List

import pytest

SAME_WORKER = {
    "tests/test_serve.py": "tests/test_export.py",
    "tests/test_distributed_setup.py": "tests/test_distributed.py",
}
# scopes (a file, or its SAME_WORKER group), with their seconds under `make test` on 2
# cores with a cold inductor cache
HEAVIEST_FIRST = [
    "tests/test_export.py",  # ~250 s: 3 packages compiled, test_serve.py's included
    "tests/test_multitask.py",  # ~110 s: a two-task model trained, exported (AOTI) and served
    "tests/test_readme_api.py",  # ~90 s: the README's Python block: train, export (AOTI), score
    "tests/test_your_log.py",  # ~65 s: the README's path, its export included
    "tests/test_sequence_floats.py",  # ~60 s: five torch.exports
    "tests/test_gpu_check.py",  # ~60 s
    "tests/test_distributed.py",  # ~60 s: 2-rank runs
    "tests/test_device.py",  # ~40 s: torch.compile'd training
    "tests/test_train.py",  # ~40 s
    "tests/test_streaming.py",  # ~40 s: memory of a large conversion
    "tests/test_interformer.py",  # ~15 s
]


def scope_of(nodeid: str) -> str:
    """The work unit of a test: its file, or the file it shares a worker with."""
    file = nodeid.split("::", 1)[0]
    return SAME_WORKER.get(file, file)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Order the items by scope: :data:`HEAVIEST_FIRST`, then the rest as collected
    (a stable sort keeps each file's own order)."""
    rank = {scope: i for i, scope in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(scope_of(item.nodeid), len(rank)))


def pytest_xdist_make_scheduler(config: pytest.Config, log):  # type: ignore[no-untyped-def]
    """xdist's file scheduling with :func:`scope_of` as the unit, in collection order
    (``--no-loadscope-reorder`` is implied)."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    config.option.loadscopereorder = False
    return Scheduler(config, log)


@pytest.fixture
def one_thread():
    """Small ops: one intra-op thread is as fast as two on an idle 2-core machine and
    several times faster on a busy one (20x measured at a load of 5)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
