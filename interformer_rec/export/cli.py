"""Sub-commands ``export``, ``predict``, ``serve`` of ``interformer-rec``."""

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the serving sub-commands to the ``interformer-rec`` parser."""
