"""HTTP JSON scoring endpoint for an exported model (aiohttp).

Endpoints::

    POST /v1/score     {"user": {...}, "candidates": [{...}, ...], "request_id": "..."}
                       -> 200 {"model", "num_candidates", "scores": {task: [p, ...]}, "request_id"}
    GET  /healthz      -> 200 {"status": "ok", counters} | 503 {"status": "draining"}
    GET  /v1/metadata  -> the model, its versions, input spec and request format

Errors are JSON ``{"error": message, "status": code}``: 400 malformed input (the message
names the field; JSON nested deeper than ``max_json_depth``), 408 body not received
within ``body_timeout_s``, 413 body over ``max_body_bytes`` or too many candidates, 503
queue full or draining, 504 timed out, 500 anything unexpected (logged; the server
keeps serving).

Hostile clients: a connection that has not sent a whole request head within
``header_timeout_s`` is closed (slow headers), and so is an idle keep-alive connection;
beyond ``max_connections`` open connections a new one gets a 503 and is closed at once.
A client that disconnects mid-request is one INFO log line. Responses hold no local
paths.

Concurrency: requests are validated on the event loop and encoded in a worker thread
(``request_timeout_s`` covers encoding and scoring together), then queued (at most
``max_pending``; beyond that a 503 answers at once) for one model thread. The batcher
merges queued requests into one package call of at most ``max_batch_rows`` rows, waiting
at most ``max_wait_ms`` for a batch to fill (micro-batching). SIGINT/SIGTERM stop
accepting connections, let in-flight requests finish (``shutdown_timeout_s``), then exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from aiohttp import ClientConnectionResetError, web
from aiohttp.web_protocol import RequestPayloadError

from interformer_rec.serving.features import Encoded, InputError
from interformer_rec.serving.predictor import Predictor, check_finite
from interformer_rec.serving.server_config import ServerConfig

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The request queue is full."""


class _Job:
    __slots__ = ("enc", "future")

    def __init__(self, enc: Encoded, future: "asyncio.Future[np.ndarray]") -> None:
        self.enc = enc
        self.future = future


class MicroBatcher:
    """Merges concurrent requests into model calls on one worker thread.

    Args:
        score: ``Encoded [n rows] -> [n, tasks]`` (runs on the worker thread).
        max_rows: rows per call; a request larger than this runs alone.
        max_wait_s: how long the first request of a batch waits for others.
        max_pending: queued requests beyond which :meth:`submit` raises
            :class:`Overloaded`.
    """

    def __init__(
        self, score: Callable[[Encoded], np.ndarray], max_rows: int, max_wait_s: float, max_pending: int
    ) -> None:
        self.score = score
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.queue: "asyncio.Queue[Optional[_Job]]" = asyncio.Queue(maxsize=max_pending)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.task: Optional[asyncio.Task] = None
        self.stats = {"requests": 0, "rows": 0, "batches": 0, "rejected": 0, "errors": 0}

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish the queued requests, then stop the worker."""
        if self.task is not None:
            await self.queue.put(None)
            await self.task
            self.task = None
        self.executor.shutdown(wait=True)

    async def submit(self, enc: Encoded) -> np.ndarray:
        """Queue ``enc`` and wait for its ``[n, tasks]`` scores."""
        future: "asyncio.Future[np.ndarray]" = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Job(enc, future))
        except asyncio.QueueFull:
            self.stats["rejected"] += 1
            raise Overloaded(f"{self.queue.maxsize} requests already queued") from None
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: Optional[_Job] = None
        stopping = False
        while not stopping or carry is not None:
            first = carry if carry is not None else await self.queue.get()
            carry = None
            if first is None:
                break
            batch: List[_Job] = [first]
            rows = len(first.enc)
            deadline = loop.time() + self.max_wait_s
            while rows < self.max_rows and not stopping:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if job is None:
                    stopping = True
                    break
                if rows + len(job.enc) > self.max_rows:
                    carry = job
                    break
                batch.append(job)
                rows += len(job.enc)
            live = [j for j in batch if not j.future.done()]  # a timed-out caller cancelled its future
            if not live:
                continue
            try:
                merged = Encoded.concat([j.enc for j in live])
                scores = await loop.run_in_executor(self.executor, self.score, merged)
            except Exception as e:  # noqa: BLE001 - reported to every caller of the batch
                logger.exception("model call failed")
                self.stats["errors"] += 1
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.stats["batches"] += 1
            self.stats["requests"] += len(live)
            self.stats["rows"] += rows
            start = 0
            for j in live:
                n = len(j.enc)
                if not j.future.done():
                    j.future.set_result(scores[start : start + n])
                start += n


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers or None)


@web.middleware
async def _json_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Every error as JSON; an unexpected exception is a 500, never a crash; a client
    gone mid-request is one INFO line (it cannot read an answer)."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason)
    except (ConnectionError, ClientConnectionResetError) as e:
        logger.info("client %s disconnected during %s %s (%s)", request.remote, request.method, request.path, type(e).__name__)
        return _error(499, "client disconnected")
    except Exception:  # noqa: BLE001
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal server error")


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object with each key once: a repeated key is refused (``ValueError``),
    never resolved silently by the last value."""
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:100]!r} appears more than once in one object")
        out[key] = value
    return out


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of decoded JSON ``value`` (a scalar is 0, ``[]`` is 1), counted
    level by level over the containers only (no recursion), at most to ``limit + 1``."""
    depth, level = 0, [value] if isinstance(value, (dict, list)) else []
    while level and depth <= limit:
        depth += 1
        level = [v for x in level for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, (dict, list))]
    return depth


BATCHER = web.AppKey("batcher", MicroBatcher)
PREDICTOR = web.AppKey("predictor", Predictor)
CONFIG = web.AppKey("config", ServerConfig)
STATE = web.AppKey("state", dict)


def create_app(predictor: Predictor, cfg: ServerConfig) -> web.Application:
    """The aiohttp application serving ``predictor`` (see the module docstring)."""
    app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[_json_errors])
    app[PREDICTOR] = predictor
    app[CONFIG] = cfg
    app[STATE] = {"draining": False, "started": time.time()}
    predictor.max_candidates = min(cfg.max_candidates, predictor.max_batch)

    async def batcher_ctx(app: web.Application):
        batcher = MicroBatcher(
            predictor.predict_encoded, cfg.max_batch_rows, cfg.max_wait_ms / 1000.0, cfg.max_pending
        )
        batcher.start()
        app[BATCHER] = batcher
        yield
        await batcher.stop()

    async def on_shutdown(app: web.Application) -> None:
        app[STATE]["draining"] = True

    app.cleanup_ctx.append(batcher_ctx)
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/v1/score", _score)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/v1/metadata", _metadata)
    return app


async def _score(request: web.Request) -> web.Response:
    app = request.app
    if app[STATE]["draining"]:
        return _error(503, "server is shutting down")
    predictor, cfg = app[PREDICTOR], app[CONFIG]
    if request.content_length is not None and request.content_length > cfg.max_body_bytes:
        too_large = _error(413, f"request body of {request.content_length} bytes: at most {cfg.max_body_bytes}")
        too_large.force_close()  # its body is never read: the connection cannot be reused
        return too_large
    try:  # over client_max_size while reading (chunked, or decompressed): HTTPRequestEntityTooLarge (413)
        body = await asyncio.wait_for(request.read(), cfg.body_timeout_s)
    except asyncio.TimeoutError:
        return _error(408, f"request body not received within {cfg.body_timeout_s:g}s")
    except RequestPayloadError as e:
        encoding = request.headers.get("Content-Encoding", "identity")
        return _error(400, f"request body could not be read as sent (Content-Encoding: {encoding}): {e.__cause__ or e}")
    too_deep = f"request body: JSON nested deeper than {cfg.max_json_depth} levels"
    try:
        payload = json.loads(body, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as e:
        return _error(400, f"request body is not valid JSON ({e})")
    except RecursionError:
        return _error(400, too_deep)
    if isinstance(payload, dict) and isinstance(payload.get("candidates"), list):
        n = len(payload["candidates"])
        if n > predictor.max_candidates:
            return _error(413, f"candidates: {n} candidates, at most {predictor.max_candidates} per request")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.request_timeout_s  # encoding and scoring together
    try:  # off the event loop: /healthz and other requests are answered meanwhile
        enc = await asyncio.wait_for(loop.run_in_executor(None, predictor.encode_request, payload), cfg.request_timeout_s)
    except InputError as e:
        # a valid request is at most 3 levels deep, so only a rejected one is measured
        return _error(400, too_deep if json_depth(payload, cfg.max_json_depth) > cfg.max_json_depth else str(e))
    except asyncio.TimeoutError:
        return _error(504, f"encoding and scoring took longer than {cfg.request_timeout_s:g}s")
    try:
        probs = await asyncio.wait_for(app[BATCHER].submit(enc), max(deadline - loop.time(), 0.0))
    except Overloaded as e:
        return _error(503, f"server overloaded: {e}; retry later", **{"Retry-After": "1"})
    except asyncio.TimeoutError:
        return _error(504, f"encoding and scoring took longer than {cfg.request_timeout_s:g}s")
    try:
        check_finite(probs, lambda i: f"candidates[{i}]", predictor.spec, enc)
    except InputError as e:
        return _error(400, str(e))
    return web.json_response(predictor.response(payload, probs))


async def _health(request: web.Request) -> web.Response:
    app = request.app
    batcher = app.get(BATCHER)
    body: Dict[str, Any] = {
        "status": "draining" if app[STATE]["draining"] else "ok",
        "model": app[PREDICTOR].name,
        "uptime_s": round(time.time() - app[STATE]["started"], 3),
    }
    if batcher is not None:
        body.update(batcher.stats, pending=batcher.queue.qsize())
    return web.json_response(body, status=503 if app[STATE]["draining"] else 200)


async def _metadata(request: web.Request) -> web.Response:
    p, cfg = request.app[PREDICTOR], request.app[CONFIG]
    m = p.manifest
    model = {k: v for k, v in (m.get("model") or {}).items() if k != "checkpoint"}  # no local paths
    return web.json_response(
        {
            "model": model,
            "versions": m.get("versions"),
            "inputs": m.get("inputs"),
            "quantization": m.get("quantization", {}).get("embeddings"),
            "tasks": p.tasks,
            "request": p.spec.to_dict()["request"],
            "limits": asdict(cfg),
        }
    )


# --------------------------------------------------------------------------- running


async def run_server(
    predictor: Predictor, cfg: ServerConfig, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    """Serve until ``stop`` is set, then stop listening, drain in-flight requests (up to
    ``cfg.shutdown_timeout_s``) and stop the batcher. ``on_ready(url)`` runs once the
    socket listens (``cfg.port == 0`` picks a free port)."""
    app = create_app(predictor, cfg)
    # aiohttp closes a connection whose request head is incomplete after keepalive_timeout
    runner = web.AppRunner(
        app, shutdown_timeout=cfg.shutdown_timeout_s, access_log=None, keepalive_timeout=cfg.header_timeout_s
    )
    await runner.setup()
    server: Optional[asyncio.AbstractServer] = None
    try:
        handler = runner.server
        assert handler is not None
        factory = partial(_capped_protocol, handler, cfg.max_connections)
        server = await asyncio.get_running_loop().create_server(factory, cfg.host, cfg.port, reuse_address=True)
        host, port = server.sockets[0].getsockname()[:2]
        on_ready(f"http://{host}:{port}")
        await stop.wait()
    finally:
        if server is not None:
            server.close()  # stop accepting; in-flight requests drain in cleanup()
        await runner.cleanup()


_BUSY_BODY = json.dumps({"error": "too many open connections", "status": 503}).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Busy(asyncio.Protocol):
    """Answers 503 and closes: the connection beyond ``max_connections``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(_BUSY)  # type: ignore[attr-defined]
        transport.close()


def _capped_protocol(handler: web.Server, max_connections: int) -> asyncio.Protocol:
    """aiohttp's protocol for a new connection, or :class:`_Busy` beyond the cap."""
    if len(handler.connections) >= max_connections:
        logger.info("connection refused: %d connections open (max_connections)", len(handler.connections))
        return _Busy()
    return handler()


def serve(model_dir: Path | str, cfg: ServerConfig) -> None:
    """Load the export in ``model_dir`` and serve it until SIGINT/SIGTERM; prints one
    JSON line per event (``serving`` with the URL, ``shutting_down``, ``stopped``)."""
    predictor = Predictor(model_dir, max_candidates=cfg.max_candidates)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            print(json.dumps({"event": "shutting_down", "signal": sig.name}), flush=True)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)

        def ready(url: str) -> None:
            print(json.dumps({"event": "serving", "url": url, "model": predictor.name}), flush=True)

        await run_server(predictor, cfg, stop, ready)
        print(json.dumps({"event": "stopped"}), flush=True)

    asyncio.run(main())


class BackgroundServer:
    """The server on a background thread (for tests and embedding)::

        with BackgroundServer(predictor, ServerConfig(port=0)) as s:
            requests.post(s.url + "/v1/score", json=request)
    """

    def __init__(self, predictor: Predictor, cfg: ServerConfig) -> None:
        self.predictor = predictor
        self.cfg = cfg
        self.url = ""
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._main, name="interformer-serve", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(url: str) -> None:
                self.url = url
                self._ready.set()

            await run_server(self.predictor, self.cfg, self._stop, ready)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
