"""`genllava web` driven in a real headless Chromium (Debian's `chromium` through Playwright): upload an
image and ask about it, ask for an image and see it rendered, edit it in a follow-up turn; a
screenshot is saved under tests/artifacts/. The model is the shapes world's pretrained parts with
untrained glue (GenLlava.build): the test checks the app against the model's own answers, not the
model's accuracy. `make test` installs chromium (apt, as root) and playwright (the dev extra);
without them the browser tests skip and say why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from copy import deepcopy
from pathlib import Path

import pytest
import torch

from genllava import presets
from genllava.data.conversation import ASSISTANT, Message, user
from genllava.data.templates import I2T, T2I
from genllava.model.modeling import GenLlava
from genllava.shapes.world import Scene, Shape, render

from serving import stop_process

ARTIFACTS = Path(__file__).parent / "artifacts"
QUESTION = "What color is the circle?"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("GENLLAVA_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def shapes_model_dir(tmp_path_factory) -> Path:
    config, _ = presets.preset("shapes")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("web") / "model"
    GenLlava.build(deepcopy(config)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("web-input") / "red-circle.png"
    render(Scene((Shape("red", "circle", "center"),)), size=128).save(path)
    return path


# ---- the page's conversation as the model sees it (no browser) -------------------------------
def file_part(path) -> dict:
    return {"type": "file", "file": {"path": str(path)}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def test_the_page_history_becomes_the_models_conversation(photo, tmp_path):
    pytest.importorskip("gradio")
    from genllava.serve.web import conversation

    drawn = tmp_path / "drawn.png"
    render(Scene((Shape("blue", "square", "center"),))).save(drawn)
    history = [
        {"role": "user", "content": [text_part("hello")]},  # before the upload: another conversation
        {"role": "assistant", "content": [text_part("hi")]},
        {"role": "user", "content": [file_part(photo), text_part(QUESTION)]},
        {"role": "assistant", "content": [text_part("red")]},
        {"role": "user", "content": [text_part("Draw a blue square at the center.")]},
        {"role": "assistant", "content": [file_part(drawn)]},  # an image answer's parts may come as
        {"role": "assistant", "content": [text_part("Here it is.")]},  # separate messages
    ]
    messages, image, latest = conversation(history, {"text": "Make it green.", "files": []})
    assert messages == [user(QUESTION, has_image=True), Message(ASSISTANT, "red", task=I2T),
                        user("Draw a blue square at the center."),
                        Message(ASSISTANT, "Here it is.", task=T2I, image_answer=True), user("Make it green.")]
    assert image.size == (128, 128) and latest.size == (32, 32)  # the edit starts from the drawn image
    assert image.getpixel((64, 64)) != latest.getpixel((16, 16))

    # A new upload starts a new conversation about it; a literal <image> typed by the user stays text.
    messages, image, latest = conversation(history, {"text": "<image> what is this?", "files": [str(photo)]})
    assert messages == [user("<image> what is this?", has_image=True)] and latest is image


def test_a_bad_upload_or_an_empty_message_is_a_message_on_the_page(shapes_model_dir, tmp_path):
    gr = pytest.importorskip("gradio")
    from genllava.serve.web import respond

    model = GenLlava.from_pretrained(shapes_model_dir)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    args = ("auto (the model chooses)", 0, 3.0, 2, 1.0)
    with pytest.raises(gr.Error, match="cannot be read"):
        respond(model, tmp_path, {"text": "what is it?", "files": [str(broken)]}, [], *args)
    with pytest.raises(gr.Error, match="Type a question"):
        respond(model, tmp_path, {"text": "  ", "files": []}, [], *args)
    drawn = respond(model, tmp_path, {"text": "Draw a red circle.", "files": []}, [], "image", 0, 3.0, 2, 1.0)
    assert Path(drawn["files"][0]).exists()


# ---- in the browser ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web_url(shapes_model_dir, tmp_path_factory):
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install -e '.[serve]' (make test does)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("web-server") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(log_path.parent / "gradio")}
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "genllava", "web", "--model", str(shapes_model_dir),
                                   "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"genllava web exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"genllava web did not answer within 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(server, timeout=30)


@pytest.fixture()
def page(request, tmp_path):
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs playwright: pip install -e '.[dev]' (make test does)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("the browser test needs Chromium: apt-get install chromium (make test does when run as root), "
                    "or set GENLLAVA_CHROMIUM to a Chromium executable")
    web_url = request.getfixturevalue("web_url")  # the server starts only once a browser is there
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 1500})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.elsewhere = []  # every request that leaves the machine: the app must run offline
        page.on("request", lambda r: page.elsewhere.append(r.url)
                if not r.url.startswith((web_url, "data:", "blob:")) else None)
        page.goto(web_url)
        page.wait_for_selector("textarea")
        try:
            yield page
        finally:
            context.close()


def send(page, text: str, upload: Path | None = None) -> None:
    """Types a message (with an upload) and waits for the model's answer to appear."""
    before = page.locator("[data-testid=bot]").count()
    if upload is not None:
        page.set_input_files("input[type=file]", str(upload))
        page.wait_for_selector("[data-testid=textbox] img, .thumbnail-item img, .thumbnails img", state="attached")
    page.locator("textarea").first.fill(text)
    page.locator("textarea").first.press("Enter")
    # Answered: a new message from the model, and the textbox enabled again for the next turn.
    page.wait_for_function("n => document.querySelectorAll('[data-testid=bot]').length > n && "
                           "!document.querySelector('textarea').disabled", arg=before)


def rendered_images(page) -> list[tuple[int, int]]:
    """The natural sizes of the images in the model's messages, once each has loaded."""
    page.wait_for_function("[...document.querySelectorAll('[data-testid=bot] img')].every(i => i.complete)")
    return [tuple(size) for size in page.eval_on_selector_all(
        "[data-testid=bot] img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")]


def bot_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("[data-testid=bot]").all_inner_texts()]


def save_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_ask_about_an_uploaded_image_in_the_browser(page, photo, shapes_model_dir):
    from genllava.data.images import load_image

    send(page, QUESTION, upload=photo)
    expected = GenLlava.from_pretrained(shapes_model_dir).generate(
        [[user(QUESTION, has_image=True)]], [load_image(photo)], seed=0)[0]
    assert expected.image is None and expected.text
    assert bot_texts(page)[-1] == expected.text
    # The upload shows in the person's message, the answer as words only.
    assert page.eval_on_selector_all("[data-testid=user] img", "imgs => imgs.map(i => i.naturalWidth)") == [128]
    assert rendered_images(page) == []
    save_screenshot(page, "web-understanding.png")
    assert page.elsewhere == []


def test_draw_then_edit_the_image_in_the_browser(page):
    page.get_by_text("Image settings").click()
    page.get_by_label("image", exact=True).check()
    send(page, "Generate an image of a blue square at the center.")
    assert rendered_images(page) == [(32, 32)]
    send(page, "Make the square red.")
    assert rendered_images(page) == [(32, 32), (32, 32)]
    shot = save_screenshot(page, "web-generation.png")
    assert shot.stat().st_size > 10_000
    assert page.elsewhere == []
