"""HTTP scoring endpoint, on loopback and bounded in time: a valid ranking request,
malformed requests (clear 4xx, never a crash), huge payloads, concurrent requests
(micro-batched, same scores as alone), overload (503), scoring past the request timeout
(504), draining on shutdown, the ``interformer-rec serve`` flags (the ServerConfig
defaults) and the process stopping cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

import numpy as np
import pytest
import requests

from export_helpers import SYNTH, exported
from interformer_rec.data.synthetic import synthetic_schema
from interformer_rec.export.inputs import random_encoded
from interformer_rec.serving.features import FeatureSpec, InputError
from interformer_rec.serving.predictor import Predictor
from interformer_rec.serving.server import BackgroundServer, MicroBatcher, Overloaded, ServerConfig
from interformer_rec.serving.server_config import add_server_flags, server_config_from_flags

TIMEOUT = 20  # seconds, every HTTP call


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return exported(tmp_path_factory, "interformer")


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor(model_dir)


@pytest.fixture(scope="module")
def server(predictor):
    cfg = ServerConfig(port=0, max_body_bytes=64 << 10, max_candidates=64, max_wait_ms=20, max_pending=256)
    with BackgroundServer(predictor, cfg) as s:
        yield s


def request_body(n: int = 5, seed: int = 0, history: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "request_id": f"r{seed}",
        "user": {
            "dense_0": float(rng.normal()), "dense_1": float(rng.normal()), "user_id": int(rng.integers(50)),
            "user_segment": 1, "user_interests": [1, 2], "context": int(rng.integers(3)),
            "hist_item_ids": rng.integers(0, 40, history).tolist(), "hist_cat_ids": rng.integers(0, 5, history).tolist(),
        },
        "candidates": [{"item_id": int(i), "item_category": int(i) % 5} for i in rng.integers(0, 40, n)],
    }


def post(server, body, **kw) -> requests.Response:
    if isinstance(body, (bytes, str)):
        return requests.post(server.url + "/v1/score", data=body, timeout=TIMEOUT, **kw)
    return requests.post(server.url + "/v1/score", json=body, timeout=TIMEOUT, **kw)


def test_valid_request(server, predictor):
    body = request_body(7)
    r = post(server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["request_id"] == "r0" and out["model"] == "interformer" and out["num_candidates"] == 7
    scores = out["scores"]["click"]
    assert len(scores) == 7 and all(0.0 < p < 1.0 for p in scores)
    # one user x candidates == the same rows given one by one
    rows = [{**body["user"], **c} for c in body["candidates"]]
    np.testing.assert_allclose(scores, predictor.predict_rows(rows)[:, 0], atol=1e-6)


def test_an_input_the_model_overflows_on_is_a_400_never_a_nan(server, predictor):
    """Issue 33, item 2: a finite but huge dense value drives the model to non-finite
    logits; the server answers 400 naming the candidate, predict_rows raises, and the
    next request is scored as usual."""
    body = request_body(3)
    body["candidates"][1]["dense_0"] = 3e38  # finite in float32
    body["user"].pop("dense_0")
    body["candidates"][0]["dense_0"] = body["candidates"][2]["dense_0"] = 0.1
    r = post(server, body)
    assert r.status_code == 400 and "candidates[1]" in r.text and "not finite" in r.text, r.text
    assert "dense_0 = 3e+38" in r.text, r.text  # the feature that drove it there
    with pytest.raises(InputError, match="not finite"):
        predictor.predict_rows([{**body["user"], **c} for c in body["candidates"]])
    assert post(server, request_body(3)).status_code == 200


def test_empty_and_full_history(server):
    for history in (0, 6, 30):  # 30 > max_len: the most recent 6 are kept
        r = post(server, request_body(3, history=history))
        assert r.status_code == 200, r.text


def _with(body: dict, where: str, key: str, value) -> dict:
    body = json.loads(json.dumps(body))
    target = body["user"] if where == "user" else body["candidates"][0]
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return body


def _nest(depth: int) -> list:
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


@pytest.mark.parametrize(
    "make,status,message",
    [
        (lambda b: b"{not json", 400, "not valid JSON"),
        (lambda b: b"\xff\xfe", 400, "not valid JSON"),
        (lambda b: b"[1, 2]", 400, "expected a JSON object, got array"),
        (lambda b: {**b, "candidates": []}, 400, "candidates: expected a non-empty list"),
        (lambda b: {**b, "candidates": "x"}, 400, "candidates: expected a non-empty list"),
        (lambda b: {**b, "candidates": [1]}, 400, "candidates[0]: expected an object, got number"),
        (lambda b: {**b, "extra": 1}, 400, "unknown key(s) ['extra']"),
        (lambda b: {**b, "user": []}, 400, "user: expected an object"),
        (lambda b: _with(b, "user", "context", KeyError), 400, "missing feature(s) ['context']"),
        (lambda b: _with(b, "user", "colour", 3), 400, "user: unknown feature(s) ['colour']"),
        (lambda b: _with(b, "cand", "user_id", 3), 400, "candidates[1]: features differ from candidates[0] in ['user_id']"),
        (lambda b: {**b, "candidates": [{**c, "user_id": 1} for c in b["candidates"]]}, 400, "given both in user and in candidates"),
        (lambda b: _with(b, "cand", "item_id", "7"), 400, "candidates[0].item_id: expected an integer id, got string"),
        (lambda b: _with(b, "cand", "item_id", None), 400, "candidates[0].item_id: null"),
        (lambda b: _with(b, "cand", "item_id", 40), 400, "candidates[0].item_id: id 40 outside [0, 40)"),
        (lambda b: _with(b, "user", "dense_0", "high"), 400, "user.dense_0: expected a number, got string"),
        (lambda b: _with(b, "user", "dense_0", None), 400, "user.dense_0: expected a number, got null"),
        (lambda b: _with(b, "user", "user_id", 2**70), 400, "user.user_id: id"),
        (lambda b: _with(b, "user", "hist_item_ids", [1, 2.5]), 400, "user.hist_item_ids[1]: expected an integer id"),
        (lambda b: _with(b, "user", "hist_item_ids", [1]), 400, "user: parallel sequences have unequal lengths"),
        (lambda b: {**b, "candidates": b["candidates"] * 20}, 413, "at most 64 per request"),
        (lambda b: json.dumps({**b, "pad": "x" * (100 << 10)}).encode(), 413, "at most 65536"),
        (lambda b: json.dumps(b)[:-1].encode() + b', "candidates": []}', 400, "key 'candidates' appears more than once"),
        (lambda b: b'{"user": {"user_id": 1, "user_id": 2}}', 400, "key 'user_id' appears more than once"),
        (lambda b: b"[" * 20000 + b"]" * 20000, 400, "nested deeper than 32 levels"),  # RecursionError in json
        (lambda b: {**b, "user": {**b["user"], "dense_0": _nest(40)}}, 400, "nested deeper than 32 levels"),
        (lambda b: {**b, "request_id": 7}, 400, "request_id: expected a string of at most 128 characters, got number"),
        (lambda b: {**b, "request_id": "r" * 129}, 400, "got string of 129"),
    ],
)
def test_malformed_requests(server, make, status, message):
    r = post(server, make(request_body()))
    assert r.status_code == status, r.text
    err = r.json()
    assert err["status"] == status and message in err["error"], err


def test_routes_health_metadata(server):
    assert requests.get(server.url + "/v1/score", timeout=TIMEOUT).status_code == 405
    r = requests.get(server.url + "/nope", timeout=TIMEOUT)
    assert r.status_code == 404 and r.json()["status"] == 404
    h = requests.get(server.url + "/healthz", timeout=TIMEOUT)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    meta = requests.get(server.url + "/v1/metadata", timeout=TIMEOUT).json()
    assert meta["tasks"] == ["click"] and "hist_item_ids" in meta["request"]["features"]
    assert meta["limits"]["max_candidates"] == 64
    assert "checkpoint" not in meta["model"] and str(Path.cwd().anchor + "tmp") not in json.dumps(meta)  # no paths
    assert post(server, request_body()).status_code == 200  # still serving after all the errors


def test_concurrent_requests_are_batched_and_exact(server, predictor):
    bodies = [request_body(n=1 + i % 9, seed=i) for i in range(48)]
    before = requests.get(server.url + "/healthz", timeout=TIMEOUT).json()
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: post(server, b), bodies))
    after = requests.get(server.url + "/healthz", timeout=TIMEOUT).json()
    for body, r in zip(bodies, responses):
        assert r.status_code == 200, r.text
        assert r.json()["request_id"] == body["request_id"]
        np.testing.assert_allclose(r.json()["scores"]["click"], predictor.predict_request(body)["scores"]["click"], atol=1e-6)
    requests_done = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests_done == 48 and batches < 48  # micro-batching merged concurrent requests
    assert after["rows"] - before["rows"] == sum(len(b["candidates"]) for b in bodies)


def test_overload_is_503_not_a_crash():
    """A full queue answers Overloaded at once; queued requests still complete."""

    def slow(enc):
        time.sleep(0.05)
        return np.zeros((len(enc), 1), np.float32)

    async def run():
        spec = FeatureSpec(synthetic_schema(SYNTH))
        batcher = MicroBatcher(slow, max_rows=4, max_wait_s=0.001, max_pending=3)
        batcher.start()
        encs = [random_encoded(spec, 2, np.random.default_rng(i)) for i in range(12)]
        results = await asyncio.gather(*(batcher.submit(e) for e in encs), return_exceptions=True)
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(asyncio.wait_for(run(), TIMEOUT))
    ok = [r for r in results if isinstance(r, np.ndarray)]
    rejected = [r for r in results if isinstance(r, Overloaded)]
    assert len(ok) + len(rejected) == 12 and ok and rejected
    assert all(r.shape == (2, 1) for r in ok) and stats["rejected"] == len(rejected)


def test_scoring_past_the_request_timeout_is_504(model_dir):
    """A model call slower than request_timeout_s: 504 at the timeout (not when the call
    ends); the server then serves the next request."""
    predictor = Predictor(model_dir)
    real = predictor.predict_encoded
    slow_calls = threading.Semaphore(1)  # the first call sleeps, later ones do not
    done = threading.Event()

    def slow_once(enc):
        if slow_calls.acquire(blocking=False):
            time.sleep(2.0)
            done.set()
        return real(enc)

    predictor.predict_encoded = slow_once  # type: ignore[method-assign]
    with BackgroundServer(predictor, ServerConfig(port=0, request_timeout_s=0.3)) as server:
        start = time.perf_counter()
        r = post(server, request_body())
        elapsed = time.perf_counter() - start
        assert r.status_code == 504, r.text
        assert r.json() == {"error": "encoding and scoring took longer than 0.3s", "status": 504}
        assert elapsed < 1.5  # answered at the timeout, not after the 2 s call
        assert done.wait(TIMEOUT)
        r = post(server, request_body())
        assert r.status_code == 200, r.text


def test_encoding_counts_toward_the_request_timeout_and_does_not_block_the_server(model_dir):
    """Issue 33: a request whose encoding is slow gets its 504 at request_timeout_s, and
    /healthz is answered meanwhile (encoding runs off the event loop)."""
    predictor = Predictor(model_dir)
    real = predictor.encode_request
    done = threading.Event()

    def slow(payload):
        if payload.get("request_id") == "slow":
            time.sleep(2.0)
            done.set()
        return real(payload)

    predictor.encode_request = slow  # type: ignore[method-assign]
    with BackgroundServer(predictor, ServerConfig(port=0, request_timeout_s=0.5)) as server:
        health: List[float] = []

        def probe():
            time.sleep(0.1)
            start = time.perf_counter()
            assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200
            health.append(time.perf_counter() - start)

        t = threading.Thread(target=probe)
        t.start()
        start = time.perf_counter()
        r = post(server, {**request_body(), "request_id": "slow"})
        elapsed = time.perf_counter() - start
        t.join()
        assert r.status_code == 504 and "encoding and scoring took longer than 0.5s" in r.text, r.text
        assert elapsed < 1.5 and health and health[0] < 0.5, (elapsed, health)
        assert done.wait(TIMEOUT)
        assert post(server, request_body()).status_code == 200


def test_serve_flags_parse_to_the_config_defaults():
    """``interformer-rec serve`` has one flag per ServerConfig field, whose default and
    help are the field's, and flags parse back to a ServerConfig."""
    from interformer_rec.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m"])
    assert server_config_from_flags(args) == ServerConfig()
    args = build_parser().parse_args(["serve", "--model", "m", "--port", "0", "--max-wait-ms", "5.5"])
    assert server_config_from_flags(args) == dataclasses.replace(ServerConfig(), port=0, max_wait_ms=5.5)
    parser = argparse.ArgumentParser()
    add_server_flags(parser)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(ServerConfig):
        flag = actions[f.name]
        assert flag.option_strings == ["--" + f.name.replace("_", "-")]
        assert flag.default == f.default and flag.type is type(f.default)
        assert flag.help.startswith(f.metadata["help"])


def test_shutdown_drains_in_flight_requests(model_dir):
    """stop() while a request is being scored: it still gets its answer, then the port closes."""
    predictor = Predictor(model_dir)
    real = predictor.predict_encoded
    started = threading.Event()

    def slow(enc):
        started.set()
        time.sleep(0.5)
        return real(enc)

    predictor.predict_encoded = slow  # type: ignore[method-assign]
    server = BackgroundServer(predictor, ServerConfig(port=0, shutdown_timeout_s=10)).start()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=post(server, request_body())))
    t.start()
    assert started.wait(TIMEOUT)
    server.stop()
    t.join(TIMEOUT)
    assert result["r"].status_code == 200 and len(result["r"].json()["scores"]["click"]) == 5
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/healthz", timeout=2)


def test_serve_cli_process_sigterm(model_dir):
    """``interformer-rec serve --port 0``: prints its URL, serves, exits 0 on SIGTERM."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "interformer_rec.cli", "serve", "--model", str(model_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = None
        deadline = time.time() + 90
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("{") and json.loads(line).get("event") == "serving":
                url = json.loads(line)["url"]
        assert url, proc.stderr.read()[-3000:] if proc.poll() is not None else "no serving line"
        r = requests.post(url + "/v1/score", json=request_body(), timeout=TIMEOUT)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        events = [json.loads(x)["event"] for x in out.splitlines() if x.startswith("{")]
        assert events[-2:] == ["shutting_down", "stopped"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- hostile clients


@pytest.fixture(scope="module")
def strict_server(predictor):
    cfg = ServerConfig(port=0, header_timeout_s=1.0, body_timeout_s=1.0, max_connections=3)
    with BackgroundServer(predictor, cfg) as s:
        yield s


def _connect(server) -> socket.socket:
    from urllib.parse import urlsplit

    u = urlsplit(server.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=TIMEOUT)
    return sock


def _read_all(sock) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_slow_headers_are_cut_off(strict_server):
    """A client sending its request head a byte at a time is closed after
    header_timeout_s, not kept open for as long as it trickles."""
    sock = _connect(strict_server)
    start = time.perf_counter()
    head = b"POST /v1/score HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
    closed = False
    for byte in head:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.1)
        if time.perf_counter() - start > 6:
            break
    if not closed:
        sock.settimeout(5)
        closed = _read_all(sock) == b""
    assert closed and time.perf_counter() - start < 6
    sock.close()


def test_a_body_that_does_not_match_its_content_encoding_is_400(server):
    """Issue 33, item 10: a plain body sent as gzip or deflate is a 400, not a 500; a
    real gzip body is read (and its decompressed size is held to the body limit)."""
    import gzip

    body = json.dumps(request_body(3)).encode()
    for encoding in ("gzip", "deflate"):
        r = post(server, body, headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
        assert r.status_code == 400 and "could not be read as sent" in r.json()["error"], r.text
    r = post(server, gzip.compress(body), headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    bomb = gzip.compress(b" " * (1 << 20) + body)  # 1 MiB of spaces: over the 64 KiB limit once inflated
    r = post(server, bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def test_a_content_length_over_the_limit_is_413_at_once(strict_server):
    """Issue 33, item 10: a head announcing more than max_body_bytes is answered 413
    before any body arrives, not after body_timeout_s (1 s here)."""
    sock = _connect(strict_server)
    start = time.perf_counter()
    sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000000\r\n\r\n{")
    reply = b""
    while b'"status": 413}' not in reply and time.perf_counter() - start < 5:
        reply += sock.recv(65536)
    elapsed = time.perf_counter() - start
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413") and b"at most" in reply, reply[:300]
    assert elapsed < 0.9


def test_slow_body_is_408(strict_server):
    sock = _connect(strict_server)
    sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"user\": ")
    reply = _read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"not received within 1s" in reply


def test_connections_beyond_the_cap_get_503_and_serving_goes_on(strict_server):
    idle = [_connect(strict_server) for _ in range(3)]  # hold every slot
    time.sleep(0.2)
    extra = _connect(strict_server)
    reply = _read_all(extra)
    extra.close()
    assert reply.startswith(b"HTTP/1.1 503") and b"too many open connections" in reply
    for s in idle:
        s.close()
    time.sleep(0.3)
    assert post(strict_server, request_body()).status_code == 200


def test_a_client_gone_mid_body_is_one_info_line(strict_server, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="interformer_rec.serving.server")
    for _ in range(3):
        sock = _connect(strict_server)
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"user\"")
        time.sleep(0.1)
        sock.close()
    time.sleep(0.5)
    assert post(strict_server, request_body()).status_code == 200
    records = [r for r in caplog.records if r.name.startswith(("interformer_rec", "aiohttp"))]
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in records]
    assert sum("disconnected" in r.getMessage() for r in records if r.levelno == logging.INFO) == 3
