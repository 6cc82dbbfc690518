"""The server's limits (:class:`ServerConfig`) and their ``interformer-rec serve`` flags.
Light on purpose: the CLI parser imports it without aiohttp or torch."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field


@dataclass
class ServerConfig:
    """Limits of the server; ``interformer-rec serve`` has a flag for each field
    (``--max-batch-rows`` for ``max_batch_rows``, ...), its help the field's ``help``."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "0 picks a free port (printed at start)"})
    max_batch_rows: int = field(default=1024, metadata={"help": "rows per micro-batch (model call)"})
    max_wait_ms: float = field(default=2.0, metadata={"help": "how long a micro-batch waits to fill"})
    max_pending: int = field(default=64, metadata={"help": "queued requests before 503"})
    max_candidates: int = field(default=1024, metadata={"help": "candidates per request"})
    max_body_bytes: int = field(default=4 << 20, metadata={"help": "request body limit (413 above)"})
    max_json_depth: int = field(default=32, metadata={"help": "deepest JSON nesting accepted (400 above)"})
    max_connections: int = field(default=256, metadata={"help": "open connections; beyond, 503 and close"})
    header_timeout_s: float = field(
        default=10.0, metadata={"help": "seconds to send a request head; also the keep-alive idle limit"}
    )
    body_timeout_s: float = field(default=10.0, metadata={"help": "seconds to send the body (408 after)"})
    request_timeout_s: float = field(default=30.0, metadata={"help": "seconds to score before a 504"})
    shutdown_timeout_s: float = field(default=10.0, metadata={"help": "seconds to drain on shutdown"})


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`ServerConfig` field, its type, default and help the field's."""
    for f in dataclasses.fields(ServerConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=f.default,
            help=f"{f.metadata['help']} (default {f.default})",
        )


def server_config_from_flags(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` of flags that :func:`add_server_flags` added."""
    return ServerConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig)})
