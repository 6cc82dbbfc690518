"""The console of the command-line tools: what they log and warn."""

from __future__ import annotations

import logging
import warnings

# Libraries that warn and log a lot on CPU (sharding plans, fbgemm kernels, FX tracing).
# (torch sets the level of some of its child loggers itself: they are named too.)
THIRD_PARTY = ("torch", "torch.fx", "torch.distributed", "torchrec", "fbgemm_gpu", "torchx", "tensordict", "torchmetrics")


def quiet() -> None:
    """Keep the console readable: Python warnings (raised by the libraries, often at the
    project's call sites) are dropped and third-party loggers show errors only; the
    project's own messages are log lines (``interformer_rec.*``, INFO and above) and
    still reach the user."""
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("interformer_rec").setLevel(logging.INFO)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
