"""The server's parts without a real model: batching of concurrent requests into one generate call,
streamed words leaving while the batch still runs, a full queue (429 with retry-after), the
per-request timeout (504), remote URLs (refused, or fetched from an allowed host), body and image
limits checked before decoding, and a fake model's failures never leaking a traceback."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from genllava.model.modeling import Reply
from genllava.serve.api import create_app
from genllava.serve.errors import APIError
from genllava.serve.limits import Limits
from genllava.serve.media import decode_data_url, fetch_url, host_allowed

from serving import data_url, png_bytes


class FakeProcessor:
    max_length = 256

    def encode_prompt(self, messages, task=None):
        return [0] * sum(len(m.text.split()) + 3 for m in messages)


class FakeModel:
    """Answers "seed S: TEXT" for each row after `delay` seconds; records the rows of each call."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.processor, self.delay, self.fail_on, self.calls = FakeProcessor(), delay, fail_on, []
        self.lock = threading.Lock()

    def generate(self, conversations, images, *, seed, task=None, **options):
        with self.lock:
            self.calls.append(len(conversations))
        time.sleep(self.delay)
        if self.fail_on and any(self.fail_on in c[-1].text for c in conversations):
            raise RuntimeError("boom: an internal failure with a secret path /srv/x")
        replies = []
        for messages, s in zip(conversations, seed):
            image = Image.new("RGB", (8, 8), (s % 256, 0, 0)) if task == "[T2I]" else None
            replies.append(Reply(f"seed {s}: {messages[-1].text}", task or "[I2T]", image, prompt_tokens=3,
                                 completion_tokens=2))
        return replies


def chat(text: str, **extra) -> dict:
    return {"model": "fake", "messages": [{"role": "user", "content": text}], **extra}


def test_concurrent_requests_share_one_generate_call_and_get_their_own_answers():
    model = FakeModel(delay=0.3)
    app = create_app(model, Limits(max_batch=8, batch_wait_ms=50), model_name="fake")
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: client.post("/v1/chat/completions", json=chat(f"q{i}", seed=100 + i)),
                                  range(8)))
    for i, response in enumerate(responses):
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == f"seed {100 + i}: q{i}"
    assert len(model.calls) < 8 and max(model.calls) > 1, model.calls  # batched
    assert sum(model.calls) == 8


def test_n_rows_get_consecutive_seeds_and_batches_respect_max_batch():
    model = FakeModel()
    app = create_app(model, Limits(max_batch=2, max_n=4), model_name="fake")
    with TestClient(app) as client:
        body = client.post("/v1/chat/completions", json=chat("draw", n=3, seed=10, task="image")).json()
    assert [c["message"]["content"] for c in body["choices"]] == ["seed 10: draw", "seed 11: draw", "seed 12: draw"]
    assert all(len(c["message"]["images"]) == 1 for c in body["choices"])
    assert model.calls == [3]  # one job is never split, even over max_batch


def test_a_full_queue_answers_429_with_retry_after():
    model = FakeModel(delay=1.0)
    app = create_app(model, Limits(max_queue=2, max_batch=1, batch_wait_ms=0), model_name="fake")
    with TestClient(app) as client, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: client.post("/v1/chat/completions", json=chat(f"q{i}")), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"


def test_a_request_over_the_timeout_answers_504_and_the_server_goes_on():
    model = FakeModel(delay=0.6)
    app = create_app(model, Limits(timeout_s=0.2), model_name="fake")
    with TestClient(app) as client:
        slow = client.post("/v1/chat/completions", json=chat("slow"))
        assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout"
        model.delay = 0.0
        time.sleep(0.7)
        assert client.post("/v1/chat/completions", json=chat("fast")).status_code == 200


def test_an_internal_failure_is_a_500_without_details_and_spares_its_batch_mates():
    model = FakeModel(delay=0.2, fail_on="explode")
    app = create_app(model, Limits(batch_wait_ms=50), model_name="fake")
    with TestClient(app, raise_server_exceptions=False) as client, ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda t: client.post("/v1/chat/completions", json=chat(t)),
                                  ["fine one", "explode", "fine two"]))
    assert [r.status_code for r in responses] == [200, 500, 200]
    failed = responses[1]
    assert failed.json()["error"]["code"] == "internal_error"
    assert "boom" not in failed.text and "Traceback" not in failed.text and "/srv" not in failed.text


def test_a_streamed_body_over_the_limit_is_refused_413():
    app = create_app(FakeModel(), Limits(max_body_bytes=1000), model_name="fake")

    def chunks():
        for _ in range(10):
            yield b"x" * 200

    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        assert client.post("/v1/chat/completions", json=chat("ok")).status_code == 200


def test_a_lone_surrogate_in_text_is_text():
    model = FakeModel()
    app = create_app(model, Limits(), model_name="fake")
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", content=b'{"model":"fake","messages":[{"role":"user",'
                               b'"content":"hi \\ud800 there"}]}', headers={"content-type": "application/json"})
    assert response.status_code == 200 and "\ufffd" in response.json()["choices"][0]["message"]["content"]


def test_system_messages_are_ignored_and_consecutive_user_messages_are_one_turn():
    model = FakeModel()
    seen = []
    generate = model.generate
    model.generate = lambda conversations, images, **kw: seen.append((conversations, images)) or generate(
        conversations, images, **kw)
    app = create_app(model, Limits(), model_name="fake")
    image = Image.new("RGB", (16, 16), "red")
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json={"model": "fake", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}}]},
            {"role": "user", "content": "What color?"}]})
    assert response.status_code == 200
    (messages,), (images,) = seen[0]
    assert len(messages) == 1 and messages[0].has_image and messages[0].text == "What color?"
    assert len(images) == 1 and images[0].getpixel((0, 0)) == (255, 0, 0)


# ---- media -----------------------------------------------------------------------------------------------

def test_sizes_are_checked_before_decoding(monkeypatch):
    limits = Limits(max_image_bytes=10_000, max_image_pixels=64 * 64)
    url = data_url(Image.new("RGB", (65, 64)))
    loaded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loaded.append(self))
    with pytest.raises(APIError) as err:
        decode_data_url(url, limits, "image")
    assert err.value.status == 413 and not loaded  # refused from the header, pixels never decoded
    with pytest.raises(APIError) as err:
        decode_data_url("data:image/png;base64," + "A" * 20_000, limits, "image")
    assert err.value.status == 413


def test_remote_urls_are_fetched_only_from_allowed_hosts(tmp_path):
    image = Image.new("RGB", (4, 4), "blue")
    (tmp_path / "blue.png").write_bytes(png_bytes(image))
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler_class = httpd.RequestHandlerClass
    handler_class.log_message = lambda *a: None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/blue.png"
    try:
        with pytest.raises(APIError) as err:
            fetch_url(url, Limits(), "image")
        assert err.value.status == 400 and err.value.code == "remote_url_not_allowed"
        fetched = fetch_url(url, Limits(allowed_domains=("127.0.0.1",)), "image")
        assert fetched.size == (4, 4) and fetched.getpixel((0, 0)) == (0, 0, 255)
    finally:
        httpd.shutdown()
    assert host_allowed("img.example.com", ("example.com",)) and not host_allowed("example.com.evil", ("example.com",))
    assert not host_allowed("badexample.com", ("example.com",))


def test_b64_data_urls_round_trip():
    image = Image.new("RGB", (5, 3), (1, 2, 3))
    decoded = decode_data_url("data:image/png;base64," + base64.b64encode(png_bytes(image)).decode(), Limits(), "x")
    assert decoded.size == (5, 3) and decoded.getpixel((4, 2)) == (1, 2, 3)


class StreamingModel(FakeModel):
    """Writes "Hello", then holds the batch until the test lets it go, then finishes "Hello world"."""

    def __init__(self):
        super().__init__()
        self.go = threading.Event()

    def generate(self, conversations, images, *, seed, task=None, on_text=None, **options):
        on_text(0, "Hello")
        assert self.go.wait(30), "the test never read the first words"
        on_text(0, " world")
        return [Reply("Hello world, bye", "[I2T]", None, prompt_tokens=3, completion_tokens=4)]


def test_streamed_words_leave_while_the_batch_is_still_running():
    import uvicorn

    from serving import free_port

    model = StreamingModel()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model, model_name="fake"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        pieces = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                          json=chat("hi", stream=True)) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    pieces.append(delta["content"])
                    if len(pieces) == 1:  # generate is still blocked: this word left before it returned
                        assert not model.go.is_set()
                        model.go.set()
        assert pieces == ["Hello", " world", ", bye"]  # the words as written, then the rest of the reply
    finally:
        model.go.set()
        server.should_exit = True
        thread.join(10)


def test_under_load_a_batch_waits_a_little_longer_for_the_clients_it_just_answered():
    from genllava.data.conversation import user
    from genllava.serve.batching import BUSY_WAIT_SHARE, Batcher, Job

    model = FakeModel(delay=1.0)
    batcher = Batcher(model, max_batch=8, batch_wait_ms=1)
    gap = BUSY_WAIT_SHARE * model.delay / 4  # far over batch_wait_ms, well within the busy wait

    def ask(text):
        return batcher.submit(Job([user(text)], [], None, seed=0, n=1, options={}))

    def two_arriving_apart():
        first = ask("first")
        time.sleep(gap)
        for future in (first, ask("second")):
            future.result(10)

    try:
        for future in (ask("a"), ask("b")):  # a call of two rows: the server is busy
            future.result(10)
        two_arriving_apart()  # they share a call
        ask("alone").result(10)  # it waits the busy wait for nobody, then runs alone: a one-row call
        two_arriving_apart()  # now the server is quiet: each runs as it comes
    finally:
        batcher.close(10)
    assert model.calls == [2, 2, 1, 1, 1], model.calls
