"""Inference on chosen hardware and the generate options the API needs: from_pretrained's device and
dtype (every part in bf16 on the tiny real-classes preset, answering text and drawing, also through
the API), `auto` resolving to the CPU in fp32 here, clear errors for a GPU that is not there;
sampling with per-row seeds (temperature/top_p) and n, with greedy unchanged."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from fastapi.testclient import TestClient

from genllava import presets
from genllava.cli import main
from genllava.data import templates
from genllava.data.conversation import user
from genllava.model.device import resolve_device, resolve_dtype
from genllava.model.modeling import GenLlava
from genllava.serve.api import create_app
from genllava.serve.limits import Limits
from genllava.shapes.world import Scene, Shape, render

from serving import data_url

T2I = templates.T2I
CIRCLE = render(Scene((Shape("red", "circle", "center"),)))
QUESTION = [user("What color is the shape?", has_image=True)]


def floating(module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if p.is_floating_point()}


# ---- sampling and n ------------------------------------------------------------------------------------------

def test_greedy_is_the_default_and_per_row_seeds_draw_what_one_seed_draws(tiny_model):
    model = tiny_model.eval()
    plain, = model.generate([QUESTION], [CIRCLE], task=T2I, max_new_tokens=4, seed=3)
    explicit, = model.generate([QUESTION], [[CIRCLE]], task=T2I, max_new_tokens=4, seed=[3], temperature=0.0)
    assert plain.text == explicit.text and plain.image.tobytes() == explicit.image.tobytes()
    assert plain.prompt_tokens > 0 and plain.finish_reason in ("stop", "length")


def test_sampling_follows_each_rows_seed_whatever_shares_the_batch(tiny_model):
    model = tiny_model.eval()
    sample = dict(max_new_tokens=8, temperature=1.5, top_p=1.0)
    batch = model.generate([QUESTION] * 3, [CIRCLE] * 3, seed=[5, 5, 6], **sample)
    alone, = model.generate([QUESTION], [CIRCLE], seed=[5], **sample)
    assert batch[0].text == batch[1].text == alone.text
    texts = {model.generate([QUESTION], [CIRCLE], seed=[s], **sample)[0].text for s in range(6)}
    assert len(texts) > 1  # sampling samples
    # n replies per conversation: sample k uses seed + k.
    assert [r.text for r in model.generate([QUESTION], [CIRCLE], seed=[5], n=2, **sample)] == [alone.text, batch[2].text]
    # A nucleus this small keeps only the most likely token: greedy.
    greedy, = model.generate([QUESTION], [CIRCLE], max_new_tokens=8)
    assert model.generate([QUESTION], [CIRCLE], seed=[9], max_new_tokens=8, temperature=1.0, top_p=1e-6)[0].text == greedy.text


def test_generate_refuses_bad_sampling_options(tiny_model):
    for options in ({"temperature": -1.0}, {"top_p": 0.0}, {"n": 0}, {"seed": [1, 2]}):
        with pytest.raises(ValueError):
            tiny_model.generate([QUESTION], [CIRCLE], max_new_tokens=2, **options)


# ---- device and dtype ------------------------------------------------------------------------------------------

def test_auto_is_the_cpu_in_fp32_without_a_gpu_and_a_missing_gpu_is_one_clear_error(saved_tiny_model, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks it")
    assert resolve_device("auto") == torch.device("cpu") and resolve_dtype("auto", torch.device("cpu")) == torch.float32
    model = GenLlava.from_pretrained(saved_tiny_model, device="auto", dtype="auto")
    assert model.device == torch.device("cpu") and floating(model) == {torch.float32}
    for bad in ("cuda", "cuda:1", "tpu"):
        with pytest.raises(ValueError):
            resolve_device(bad)
    with pytest.raises(ValueError, match="bitsandbytes|CUDA"):
        GenLlava.from_pretrained(saved_tiny_model, device="cpu", quantization="4bit")
    capsys.readouterr()
    code = main(["chat", "--model", str(saved_tiny_model), "--device", "cuda", "--message", "hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "CUDA" in err[0], err


@pytest.fixture(scope="module")
def tiny_mistral_dir(tmp_path_factory):
    cache = tmp_path_factory.mktemp("genllava-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENLLAVA_CACHE", str(cache))
        config, _ = presets.preset("tiny-mistral")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-mistral") / "model"
    GenLlava.build(deepcopy(config)).save_pretrained(folder)
    return folder


def test_bf16_on_the_tiny_real_classes_answers_text_and_draws_also_through_the_api(tiny_mistral_dir):
    model = GenLlava.from_pretrained(tiny_mistral_dir, device="cpu", dtype="bfloat16")
    assert floating(model) == {torch.bfloat16} and model.negative_conditioning.dtype == torch.bfloat16
    for name, buffer in model.language_model.named_buffers():
        if name.endswith("inv_freq"):
            assert buffer.dtype == torch.float32, name  # rotary frequencies stay exact
    text, drawn = model.generate([QUESTION, [user("Generate an image of a red circle.")]], [CIRCLE, None],
                                 max_new_tokens=4, seed=[1, 2], task=None)[0], \
        model.generate([[user("Generate an image of a red circle.")]], [None], max_new_tokens=4, task=T2I, seed=2)[0]
    assert isinstance(text.text, str)
    assert drawn.image is not None and drawn.image.mode == "RGB"
    assert len(set(drawn.image.getdata())) > 1 or drawn.image.getextrema() != ((0, 0),) * 3  # finite, decoded pixels

    with TestClient(create_app(model, Limits(), model_name="tiny")) as client:
        answer = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 4, "seed": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": data_url(CIRCLE)}}]}]})
        assert answer.status_code == 200 and isinstance(answer.json()["choices"][0]["message"]["content"], str)
        image = client.post("/v1/images/generations", json={"model": "tiny", "prompt": "A red circle.", "seed": 1})
        assert image.status_code == 200 and image.json()["data"][0]["b64_json"]


def test_serve_checks_its_flags_and_folder_before_loading(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--max-n", "0"]) == 2
    assert "max_n" in capsys.readouterr().err


def test_streamed_words_add_up_to_each_rows_reply(tiny_model):
    model = tiny_model.eval()
    heard: dict[int, list[str]] = {}
    sample = dict(max_new_tokens=16, temperature=1.5, seed=[1, 2, 3])
    replies = model.generate([QUESTION] * 3, [CIRCLE] * 3, on_text=lambda row, d: heard.setdefault(row, []).append(d),
                             **sample)
    assert [r.text for r in replies] == [r.text for r in model.generate([QUESTION] * 3, [CIRCLE] * 3, **sample)]
    for row, reply in enumerate(replies):
        said = "".join(heard.get(row, []))
        assert reply.text.startswith(said) and (said or " " not in reply.text.strip()), (row, said, reply.text)
    assert max(len(pieces) for pieces in heard.values()) > 1  # word by word, not the whole reply at once


def test_a_text_answer_asked_for_never_draws_even_where_the_model_would(tiny_model):
    model = tiny_model.eval()
    soi = model.processor.soi_id

    def wants_an_image(module, inputs, logits):  # the LM's favourite next token is always [SOI]
        logits[..., soi] += 1e4
        return logits

    hook = model.language_model.get_output_embeddings().register_forward_hook(wants_an_image)
    try:
        free, = model.generate([[user("Tell me about circles.")]], [None], max_new_tokens=4)
        text, = model.generate([[user("Tell me about circles.")]], [None], task=templates.I2T, max_new_tokens=4)
    finally:
        hook.remove()
    assert free.image is not None and free.task == T2I  # left to itself, it draws
    assert text.image is None and text.task == templates.I2T and text.completion_tokens == 4


def test_a_port_already_taken_ends_serve_with_uvicorns_error_and_status_1(saved_tiny_model):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "genllava", "serve", "--model", str(saved_tiny_model), "--port",
                               str(port), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "address already in use" in done.stderr
    assert "genllava serve: model" not in done.stdout  # it never said it was listening
