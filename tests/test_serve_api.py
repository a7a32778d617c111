"""The official `openai` client against a live `genllava serve` (a subprocess on 127.0.0.1) with the
shapes model: chat about an uploaded image, image generation (chat and /v1/images/generations),
an edit through /v1/images/edits, a three-turn chat (generate, edit "it", ask about it), streaming,
the API key, bad requests answered with the right 4xx while the server keeps serving, a bounded
load test and a graceful shutdown.

The shapes model here is the preset's pretrained parts with a fresh projector and head (training
one until its answers are right takes ~15 CPU minutes, `make demo`), so every answer is checked to
be exactly the answer of `GenLlava.generate` called directly with the same conversation, images,
options and seed: the server adds and loses nothing. tests/test_serve_trained.py checks that the
answers are *right*, on a trained model when one is there."""

from __future__ import annotations

import json
import signal
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from genllava.data import templates
from genllava.data.conversation import ASSISTANT, Message, user
from genllava.model.modeling import GenLlava
from genllava.shapes.world import Scene, Shape, render

from serving import (API_KEY, LiveServer, build_shapes_model, data_url, image_from_b64, image_from_data_url,
                     png_bytes, same_pixels, threads)

T2I, I2T = templates.T2I, templates.I2T
RED_CIRCLE = render(Scene((Shape("red", "circle", "center"),)))
TWO = render(Scene((Shape("blue", "square", "top left"), Shape("green", "triangle", "bottom right"))))
FLAGS = ("--max-n", "3", "--max-images", "2", "--max-body-bytes", "3000000", "--max-image-pixels", "1000000",
         "--max-tokens", "128", "--max-steps", "30", "--timeout", "120")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_shapes_model(tmp_path_factory.mktemp("serve") / "shapes")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    live = LiveServer(model_dir, *FLAGS, log=tmp_path_factory.mktemp("serve-log") / "server.log").wait_ready()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def direct(model_dir):
    return GenLlava.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def generate(model, messages, images=(), **options):
    with threads(1):
        return model.generate([messages], [list(images)], **options)


def images_of(message) -> list:
    extra = message.model_extra or {}
    return [image_from_data_url(part["image_url"]["url"]) for part in extra.get("images") or []]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["shapes"]
    assert client.models.retrieve("shapes").id == "shapes"


def test_a_question_about_an_uploaded_image_is_the_models_answer(client, direct):
    question = "What color is the shape?"
    response = client.chat.completions.create(model="shapes", seed=5, messages=[{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": data_url(RED_CIRCLE)}}]}])
    choice, = response.choices
    expected, = generate(direct, [user(question, has_image=True)], [RED_CIRCLE], seed=[5])
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (expected.prompt_tokens,
                                                                                 expected.completion_tokens)
    assert images_of(choice.message) == [] if expected.image is None else same_pixels(images_of(choice.message)[0],
                                                                                        expected.image)


def test_generation_through_chat_returns_the_models_image_in_message_images(client, direct):
    prompt = "Generate an image of a red circle at the center."
    response = client.chat.completions.create(model="shapes", seed=7, n=2, messages=[{"role": "user", "content": prompt}],
                                              extra_body={"task": "image", "num_inference_steps": 6})
    expected = generate(direct, [user(prompt)], task=T2I, seed=[7], n=2, steps=6)
    assert len(response.choices) == 2
    for choice, reply in zip(response.choices, expected):
        assert choice.message.content == reply.text
        drawn, = images_of(choice.message)
        assert drawn.size == (32, 32) and same_pixels(drawn, reply.image)
    assert not same_pixels(images_of(response.choices[0].message)[0], images_of(response.choices[1].message)[0])


def test_images_generations_answers_the_images_response_shape(client, direct):
    prompt = "Generate an image of a blue square at the top left."
    result = client.images.generate(model="shapes", prompt=prompt, n=2, response_format="b64_json",
                                    extra_body={"seed": 3, "num_inference_steps": 6, "guidance_scale": 2.0})
    expected = generate(direct, [user(prompt)], task=T2I, seed=[3], n=2, steps=6, guidance_scale=2.0)
    assert len(result.data) == 2 and result.created > 0
    for item, reply in zip(result.data, expected):
        assert same_pixels(image_from_b64(item.b64_json), reply.image)
    sized = client.images.generate(model="shapes", prompt=prompt, size="64x64", extra_body={"seed": 3,
                                                                                         "num_inference_steps": 6})
    assert image_from_b64(sized.data[0].b64_json).size == (64, 64)


def test_images_edits_takes_a_multipart_upload(client, direct):
    instruction = "Make the circle blue."
    result = client.images.edit(model="shapes", image=("circle.png", png_bytes(RED_CIRCLE), "image/png"),
                                prompt=instruction, extra_body={"strength": 0.6, "seed": 4, "num_inference_steps": 6})
    expected, = generate(direct, [user(instruction, has_image=True)], [RED_CIRCLE], task=T2I, seed=[4],
                         strength=0.6, steps=6)
    assert same_pixels(image_from_b64(result.data[0].b64_json), expected.image)
    # A mask keeps the original where it is opaque: an opaque mask gives the input back.
    opaque = RED_CIRCLE.convert("RGBA")
    kept = client.images.edit(model="shapes", image=("circle.png", png_bytes(RED_CIRCLE), "image/png"),
                              mask=("mask.png", png_bytes(opaque), "image/png"), prompt=instruction,
                              extra_body={"seed": 4, "num_inference_steps": 6})
    assert same_pixels(image_from_b64(kept.data[0].b64_json), RED_CIRCLE)


def test_a_three_turn_chat_generates_edits_it_and_answers_about_it(client, direct):
    first, second, third = ("Generate an image of a blue square at the center.", "Now make it red.",
                            "What color is the shape?")
    history = [{"role": "user", "content": first}]
    one = client.chat.completions.create(model="shapes", messages=history, seed=11,
                                         extra_body={"task": "image", "num_inference_steps": 6}).choices[0].message
    drawn_one, = images_of(one)
    history += [{"role": "assistant", "content": one.content, "images": one.model_extra["images"]},
                {"role": "user", "content": second}]
    two = client.chat.completions.create(model="shapes", messages=history, seed=12,
                                         extra_body={"task": "image", "strength": 0.6,
                                                     "num_inference_steps": 6}).choices[0].message
    drawn_two, = images_of(two)
    history += [{"role": "assistant", "content": two.content, "images": two.model_extra["images"]},
                {"role": "user", "content": third}]
    three = client.chat.completions.create(model="shapes", messages=history, seed=13).choices[0].message

    ref_one, = generate(direct, [user(first)], task=T2I, seed=[11], steps=6)
    assert one.content == ref_one.text and same_pixels(drawn_one, ref_one.image)
    turns = [user(first), Message(ASSISTANT, one.content, task=T2I, image_answer=True), user(second)]
    ref_two, = generate(direct, turns, task=T2I, seed=[12], strength=0.6, steps=6, init_images=[drawn_one])
    assert two.content == ref_two.text and same_pixels(drawn_two, ref_two.image)
    turns += [Message(ASSISTANT, two.content, task=T2I, image_answer=True), user(third)]
    ref_three, = generate(direct, turns, seed=[13])
    assert three.content == ref_three.text


def test_streaming_yields_chunks_and_done(client, server):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What shape is at the top left?"},
                                             {"type": "image_url", "image_url": {"url": data_url(TWO)}}]}]
    whole = client.chat.completions.create(model="shapes", messages=messages, seed=2).choices[0].message.content
    chunks = list(client.chat.completions.create(model="shapes", messages=messages, seed=2, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len(chunks) >= 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"]) and chunks[-1].usage.prompt_tokens > 0
    # On the wire: server-sent events, the last one `data: [DONE]`.
    with httpx.stream("POST", server.base + "/v1/chat/completions", headers=server.headers(), timeout=60,
                      json={"model": "shapes", "messages": messages, "seed": 2, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def test_the_api_key_is_enforced(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = httpx.get(server.base + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", headers
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.base + "/v1/models", headers=server.headers()).status_code == 200


# ---- bad requests -------------------------------------------------------------------------------------------

def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (CRC fixed) over a tiny body: a decompression bomb's shape."""
    data = bytearray(png_bytes(RED_CIRCLE))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def _chat(content, **extra) -> dict:
    return {"model": "shapes", "messages": [{"role": "user", "content": content}], **extra}


def _with_image(url: str, text: str = "What is this?") -> list:
    return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]


B64 = __import__("base64").b64encode
GOOD_PNG = png_bytes(RED_CIRCLE)
BAD_REQUESTS = {
    "malformed JSON": ('{"model": "shapes", "messages": [', 400, "invalid_json"),
    "messages not a list": (_chat("hi") | {"messages": "hi"}, 400, "invalid_value"),
    "no messages": (_chat("hi") | {"messages": []}, 400, "invalid_value"),
    "a data URL that is not an image": (_chat(_with_image("data:text/plain;base64," + B64(b"hello").decode())),
                                        422, "invalid_image"),
    "image bytes that are not an image": (_chat(_with_image("data:image/png;base64," + B64(b"not a png").decode())),
                                          422, "invalid_image"),
    "a truncated image": (_chat(_with_image("data:image/png;base64," + B64(GOOD_PNG[:len(GOOD_PNG) // 2]).decode())),
                          422, "invalid_image"),
    "broken base64": (_chat(_with_image("data:image/png;base64,iVBORw0KGgo%%%")), 422, "invalid_image"),
    "a huge declared image": (_chat(_with_image("data:image/png;base64," + B64(_png_declaring(100_000, 100_000)).decode())),
                              413, "image_too_large"),
    "too many images": ({"model": "shapes", "messages": [
        {"role": "user", "content": _with_image(data_url(RED_CIRCLE))},
        {"role": "assistant", "content": "a", "images": [{"type": "image_url", "image_url": {"url": data_url(TWO)}}]},
        {"role": "user", "content": _with_image(data_url(TWO))}]}, 400, "too_many_images"),
    "two images in one turn": (_chat(_with_image(data_url(RED_CIRCLE)) + _with_image(data_url(TWO))[1:]), 400,
                               "too_many_images"),
    "n over the limit": (_chat("hi", n=4), 400, "invalid_value"),
    "max_tokens over the limit": (_chat("hi", max_tokens=10_000), 400, "invalid_value"),
    "steps over the limit": (_chat("hi", num_inference_steps=500), 400, "invalid_value"),
    "an unknown model": (_chat("hi") | {"model": "gpt-4o"}, 404, "model_not_found"),
    "a remote URL": (_chat(_with_image("https://example.com/cat.png")), 400, "remote_url_not_allowed"),
    "a file URL": (_chat(_with_image("file:///etc/passwd")), 400, "invalid_image_url"),
    "an empty message": (_chat("   "), 400, "empty_message"),
    "an image without words": (_chat(_with_image(data_url(RED_CIRCLE), "")), 400, "empty_message"),
    "literal <image>": (_chat("What is <image> here?"), 400, "special_token_in_text"),
    "literal [IMG3]": (_chat("Say [IMG3] please"), 400, "special_token_in_text"),
    "literal [T2I]": (_chat([{"type": "text", "text": "[T2I] draw"}]), 400, "special_token_in_text"),
    "an assistant message last": ({"model": "shapes", "messages": [{"role": "user", "content": "hi"},
                                                                   {"role": "assistant", "content": "hello"}]},
                                  400, "invalid_conversation"),
    "an overlong conversation": (_chat("red square " * 400), 400, "context_length_exceeded"),
    "an unknown task": (_chat("hi", task="video"), 400, "invalid_value"),
    "temperature out of range": (_chat("hi", temperature=5), 400, "invalid_value"),
    "a body over the limit": (_chat("x" * 3_100_000), 413, "request_too_large"),
}


def _assert_openai_error(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body


def test_bad_requests_get_the_right_4xx_and_the_server_keeps_serving(server):
    with httpx.Client(base_url=server.base, headers=server.headers(), timeout=60) as http:
        for name, (body, status, code) in BAD_REQUESTS.items():
            content = body if isinstance(body, str) else json.dumps(body)
            response = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
            _assert_openai_error(response, status, code)
        _assert_openai_error(http.get("/v1/nowhere"), 404, "not_found")
        _assert_openai_error(http.post("/v1/images/generations", json={"prompt": " "}), 400, "empty_message")
        _assert_openai_error(http.post("/v1/images/generations", json={"prompt": "x", "size": "big"}), 400,
                             "invalid_value")
        _assert_openai_error(http.post("/v1/images/edits", json={"prompt": "x"}), 415, "unsupported_media_type")
        _assert_openai_error(http.post("/v1/images/edits", data={"prompt": "Make it red."},
                                       files={"other": ("a.txt", b"x", "text/plain")}), 400, "missing_image")
        _assert_openai_error(http.post("/v1/images/edits", data={"prompt": "Make it red."},
                                       files={"image": ("a.png", b"GIF89a-not", "image/png")}), 422, "invalid_image")
        _assert_openai_error(http.post("/v1/images/edits", data={"prompt": "Make it red.", "strength": "2"},
                                       files={"image": ("a.png", GOOD_PNG, "image/png")}), 400, "invalid_value")
        good = http.post("/v1/chat/completions", json=_chat("Hello!", max_tokens=4))
        assert good.status_code == 200 and good.json()["choices"][0]["message"]["role"] == "assistant"
    assert server.process.poll() is None


def test_three_hundred_requests_at_concurrency_sixteen_lose_nothing(server):
    """A bounded load test: every request answered, none with a 5xx, well within the time bound."""
    def one(i: int):
        body = _chat(f"What color is shape {i}?", max_tokens=6, seed=i)
        if i % 10 == 0:  # some image answers in the mix
            body.update(task="image", num_inference_steps=2, max_tokens=6)
        try:
            response = http.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as err:
            return ("lost", repr(err))
        return (response.status_code, response.json()["choices"][0]["message"]
                if response.status_code == 200 else response.text[:200])

    started = time.monotonic()
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(base_url=server.base, headers=server.headers(), timeout=120, limits=limits) as http:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(300)))
    elapsed = time.monotonic() - started
    calls = httpx.get(server.base + "/health").json()["generate_calls"]
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
    images = [message for i, (_, message) in enumerate(results) if i % 10 == 0]
    assert all(len(m.get("images") or []) == 1 for m in images)
    assert elapsed < 240, elapsed
    assert calls["largest"] > 1, calls  # concurrent requests were batched
    print(f"300 requests at concurrency 16: {elapsed:.1f} s, {300 / elapsed:.1f} requests/s; {calls}")


def test_graceful_shutdown_finishes_the_running_request(server):
    """Last in this module: SIGTERM while a request runs; it is answered, then the server exits 0."""
    answer = {}

    def slow():
        answer["response"] = httpx.post(server.base + "/v1/images/generations", headers=server.headers(), timeout=120,
                                        json={"prompt": "Generate an image of a red circle.", "n": 2,
                                              "num_inference_steps": 20, "seed": 1})

    worker = threading.Thread(target=slow)
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and httpx.get(server.base + "/health").json()["queued"] == 0:
        time.sleep(0.01)
    assert httpx.get(server.base + "/health").json()["queued"] >= 1
    server.process.send_signal(signal.SIGTERM)
    worker.join(120)
    code = server.stop()
    assert answer["response"].status_code == 200, answer["response"].text[:300]
    assert len(answer["response"].json()["data"]) == 2
    assert code == 0, server.output()
