"""Every command on bad input and after a crash (issue 20).

Each bad input ends with exit code 2 and one `error:` line on stderr naming the item, no traceback
and nothing half-written; what can be checked before a model loads is (a model load here fails the
test). Then the issue's points 4-9: reproducible training, atomic model folders, images never
overwritten, an edit strength that works, replies that stop at the end of the turn, quiet commands.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genllava.cli import main, parser
from genllava.model.modeling import GenLlava
from test_cli import run  # the CLI in-process: (exit code, stdout, stderr)

ROOT = Path(__file__).resolve().parents[1]


def refused(capsys, *argv, mentions=()) -> str:
    """Runs the CLI; asserts exit 2, exactly one stderr line (an `error:` line), no traceback."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for mention in mentions:
        assert str(mention) in lines[0], lines[0]
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture()
def no_model_load(monkeypatch):
    """A model load fails the test: the mistake must be found before one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(GenLlava, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(GenLlava, "build", classmethod(refuse))


@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


# ---- 1, 2: refused before a model loads ------------------------------------------------------------------

EDIT = ["edit", "--model", "{tmp}/model", "--image", "{photo}", "--instruction", "Make it blue.", "--out", "{tmp}/e.png"]


@pytest.mark.parametrize("argv, mention", [
    (["eval", "shapes", "--model", "{tmp}/model", "--samples", "0", "--out", "{tmp}/e.json"], "--samples"),
    (["eval", "shapes", "--model", "{tmp}/model", "--samples", "-3", "--out", "{tmp}/e.json"], "--samples"),
    (["eval", "shapes", "--model", "{tmp}/model", "--samples", "many", "--out", "{tmp}/e.json"], "--samples"),
    (["eval", "probe", "--model", "{tmp}/model", "--kind", "size"], "--kind"),
    (["eval", "probe", "--model", "{tmp}/model", "--kind", "count", "--shapes", "3"], "--shapes"),
    (["eval", "probe", "--model", "{tmp}/model", "--kind", "count", "--samples", "0"], "--samples"),
    (EDIT + ["--strength", "0"], "--strength"),
    (EDIT + ["--strength", "2"], "--strength"),
    (EDIT + ["--strength", "nan"], "--strength"),
    (EDIT + ["--strength", "-0.5"], "--strength"),
    (["chat", "--model", "{tmp}/model", "--message", "What is it?", "--strength", "2"], "--strength"),
    (["chat", "--model", "{tmp}/model", "--strength", "1.5"], "--strength"),
])
def test_numbers_out_of_range_are_refused_by_the_parser(argv, mention, tmp_path, photo, capsys, no_model_load):
    refused(capsys, *[a.format(tmp=tmp_path, photo=photo) for a in argv], mentions=[mention])
    assert files_under(tmp_path) == ["in.png"]


@pytest.mark.parametrize("argv, mention", [
    (["train", "--steps", "0"], "--steps"),
    (["train", "--steps", "-1"], "--steps"),
    (["train", "--global-batch", "0"], "--global-batch"),
    (["train", "--micro-batch", "0"], "--micro-batch"),
    (["quickstart", "--samples", "0"], "--samples"),
    (["quickstart", "--steps", "0"], "--steps"),
    (["train", "--preset", "nope"], "--preset"),
])
def test_training_numbers_out_of_range(argv, mention, tmp_path, capsys, no_model_load):
    refused(capsys, *argv, "--out", tmp_path / "run", mentions=[mention])
    assert not (tmp_path / "run").exists()


def test_an_unknown_command_is_one_line(capsys):
    refused(capsys, "paint", mentions=["invalid choice"])


@pytest.mark.parametrize("name", ["picture", "picture.txt", "picture.json"])
def test_an_output_that_is_not_an_image_file_name(name, saved_tiny_model, tmp_path, capsys, no_model_load):
    refused(capsys, "generate", "--model", saved_tiny_model, "--prompt", "A red circle.", "--out", tmp_path / name,
            mentions=[name, ".png"])
    assert files_under(tmp_path) == []


def test_output_paths_that_cannot_be_written(saved_tiny_model, photo, tmp_path, capsys, no_model_load):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    folder = tmp_path / "a-folder.png"
    folder.mkdir()
    for out, mention in ((folder, "folder"), (a_file / "x.png", "a-file"), (a_file / "deeper" / "x.png", "a-file")):
        refused(capsys, "generate", "--model", saved_tiny_model, "--prompt", "A red circle.", "--out", out,
                mentions=[mention])
        refused(capsys, "edit", "--model", saved_tiny_model, "--image", photo, "--instruction", "Make it blue.",
                "--out", out, mentions=[mention])
    for out in (folder, a_file / "metrics.json"):
        refused(capsys, "eval", "shapes", "--model", saved_tiny_model, "--out", out, "--samples", 1, mentions=["--out"])
        refused(capsys, "eval", "probe", "--model", saved_tiny_model, "--kind", "count", "--out", out, mentions=["--out"])
    refused(capsys, "chat", "--model", saved_tiny_model, "--message", "hi", "--out-dir", a_file, mentions=["a-file"])
    refused(capsys, "train", "--out", a_file, "--steps", 1, mentions=["a-file", "folder"])
    refused(capsys, "quickstart", "--out", a_file, "--steps", 1, mentions=["a-file", "folder"])
    assert sorted(files_under(tmp_path)) == ["a-file", "a-folder.png", "in.png"] and a_file.read_text() == "x"


def test_an_output_in_a_read_only_folder(saved_tiny_model, capsys, no_model_load):
    try:
        Path("/sys/genllava-probe").touch()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    refused(capsys, "generate", "--model", saved_tiny_model, "--prompt", "A red circle.", "--out", "/sys/red.png",
            mentions=["/sys", "cannot write"])


def test_train_data_that_is_not_a_built_mixture(tmp_path, capsys, no_model_load):
    refused(capsys, "train", "--data", tmp_path / "absent", "--out", tmp_path / "run", mentions=["absent", "does not exist"])
    (tmp_path / "folder").mkdir()
    refused(capsys, "train", "--data", tmp_path / "folder", "--out", tmp_path / "run", mentions=["folder", "built mixture"])
    refused(capsys, "train", "--preset", "genllava-mistral-7b", "--out", tmp_path / "run", mentions=["--data"])
    assert not (tmp_path / "run").exists()


def test_chat_inputs_checked_before_the_model(saved_tiny_model, tmp_path, capsys, no_model_load):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    refused(capsys, "chat", "--model", saved_tiny_model, "--image", tmp_path / "nowhere.jpg", "--message", "hi",
            mentions=["nowhere.jpg", "does not exist"])
    refused(capsys, "chat", "--model", saved_tiny_model, "--image", tmp_path, "--message", "hi", mentions=["directory"])
    refused(capsys, "chat", "--model", saved_tiny_model, "--image", corrupt, "--message", "hi", mentions=["corrupt.jpg"])
    refused(capsys, "chat", "--model", saved_tiny_model, "--message", "   ", mentions=["empty message"])
    refused(capsys, "generate", "--model", saved_tiny_model, "--prompt", " ", "--out", tmp_path / "x.png",
            mentions=["empty prompt"])


# ---- 1, 5: model folders that are missing, incomplete or corrupt -----------------------------------------

@pytest.fixture()
def model_copy(saved_tiny_model, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved_tiny_model, folder)
    return folder


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def chat_with(capsys, folder, *mentions) -> str:
    return refused(capsys, "chat", "--model", folder, "--message", "hi", "--out-dir", folder.parent / "chat",
                   mentions=mentions)


def test_a_missing_model_folder(tmp_path, capsys):
    chat_with(capsys, tmp_path / "absent", "absent", "does not exist")


def test_a_model_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "model").write_text("x")
    chat_with(capsys, tmp_path / "model", "is a file")


def test_an_incomplete_model_folder_says_so(model_copy, capsys):
    shutil.rmtree(model_copy / "language_model")
    (model_copy / "language_model").mkdir()  # what a kill during the old non-atomic save left
    chat_with(capsys, model_copy, "not a complete genllava model folder", "language_model")


def test_a_truncated_projector_file_is_named(model_copy, capsys):
    truncate(model_copy / "model.safetensors")
    chat_with(capsys, model_copy, str(model_copy / "model.safetensors"), "corrupt")


def test_a_truncated_language_model_file_is_named(model_copy, capsys):
    weights = next((model_copy / "language_model").glob("*.safetensors"))
    truncate(weights)
    chat_with(capsys, model_copy, str(weights), "corrupt")


def test_an_invalid_config_is_named(model_copy, capsys):
    (model_copy / "config.json").write_text('{"model_type": "genllava", ')
    chat_with(capsys, model_copy, str(model_copy / "config.json"))


def test_an_invalid_processor_config_is_named(model_copy, capsys):
    (model_copy / "genllava_processor.json").write_text("{nope")
    chat_with(capsys, model_copy, "genllava_processor.json")


def test_a_config_that_is_not_genllava(model_copy, capsys):
    (model_copy / "config.json").write_text(json.dumps({"model_type": "llama"}))
    chat_with(capsys, model_copy, "not a genllava config")


def test_a_missing_local_part_is_not_sent_to_the_hub(model_copy, capsys):
    config = json.loads((model_copy / "config.json").read_text())
    config["vision_tower"] = str(model_copy.parent / "no-such-tower")
    (model_copy / "config.json").write_text(json.dumps(config))
    start = time.monotonic()
    line = chat_with(capsys, model_copy, "no-such-tower", "does not exist")
    assert "hub" not in line and time.monotonic() - start < 10


# ---- 3: text of any encoding; overlong prompts -----------------------------------------------------------

@pytest.mark.parametrize("message", ["What is \udc80\udcff here?", "a lone \ud83d surrogate", "caf\udce9 ?"])
def test_text_that_is_not_utf8_becomes_replacement_characters(message, saved_tiny_model, tmp_path, capsys):
    code, out, err = run(capsys, "chat", "--model", saved_tiny_model, "--message", message, "--out-dir", tmp_path)
    assert code == 0, err
    assert "Traceback" not in err


def test_non_utf8_bytes_on_the_command_line(saved_tiny_model, tmp_path):
    """As a shell passes them: argv bytes that are not UTF-8, in a real process."""
    done = subprocess.run([os.fsencode(sys.executable), b"-m", b"genllava", b"generate", b"--model",
                           os.fsencode(saved_tiny_model), b"--prompt", b"a red \xff\xfe circle", b"--out",
                           os.fsencode(tmp_path / "red.png")], capture_output=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert (tmp_path / "red.png").is_file()


def test_an_overlong_prompt_is_one_line_without_library_warnings(saved_tiny_model, tmp_path, capsys):
    refused(capsys, "chat", "--model", saved_tiny_model, "--message", "draw a circle " * 8000, "--out-dir", tmp_path,
            mentions=["over the model's limit"])
    assert files_under(tmp_path) == []


# ---- 4: the same command and seed give bit-identical weights ---------------------------------------------

def test_the_same_train_command_twice_gives_identical_weights(tmp_path):
    from safetensors.torch import load_file

    def train(out: Path) -> dict[str, torch.Tensor]:
        done = subprocess.run([sys.executable, "-m", "genllava", "train", "--preset", "shapes", "--steps", "2",
                               "--seed", "1", "--global-batch", "4", "--micro-batch", "2", "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "enable_nested_tensor" not in done.stderr and "Setting accelerator to CPU" not in done.stdout
        tensors = load_file(str(out / "model" / "model.safetensors"))
        for path in sorted((out / "model" / "language_model").glob("*.safetensors")):
            tensors |= {f"lm.{k}": v for k, v in load_file(str(path)).items()}
        return tensors

    first, second = train(tmp_path / "a"), train(tmp_path / "b")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ---- 5: the model folder is written atomically -----------------------------------------------------------

def test_a_failed_save_leaves_the_previous_model_folder_as_it_was(tiny_model, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def dies_halfway(self, target, state_dict):
        self.config.save(target)
        (target / "language_model").mkdir()
        raise KeyboardInterrupt  # as a kill would, mid-save

    monkeypatch.setattr(GenLlava, "_write_folder", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        tiny_model.save_pretrained(folder)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .partial left behind
    with pytest.raises(KeyboardInterrupt):
        tiny_model.save_pretrained(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


# ---- 6: generated images are never overwritten -----------------------------------------------------------

def _save_many(folder: str, count: int, colour: int) -> list[str]:
    from genllava.chat import save_new_image

    return [str(save_new_image(Image.new("RGB", (8, 8), (colour, k, 0)), folder)) for k in range(count)]


def test_images_saved_at_once_by_two_processes_never_collide(tmp_path):
    (tmp_path / "image-001.png").write_bytes(b"an earlier run's image")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        saved = pool.starmap(_save_many, [(str(tmp_path), 12, 0), (str(tmp_path), 12, 255)])
    paths = saved[0] + saved[1]
    assert len(set(paths)) == 24 and str(tmp_path / "image-001.png") not in paths
    assert (tmp_path / "image-001.png").read_bytes() == b"an earlier run's image"
    for colour, mine in zip((0, 255), saved):
        for k, path in enumerate(mine):
            with Image.open(path) as image:
                assert image.getpixel((0, 0)) == (colour, k, 0)  # each file holds what its process saved
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(p).name for p in paths] + ["image-001.png"])


def test_a_name_taken_between_the_scan_and_the_save_is_skipped(tmp_path, monkeypatch):
    """The race itself, made certain: another process takes image-001.png after this one chose it."""
    import genllava.chat as chat

    real_link = os.link

    def racing_link(source, target):
        if Path(target).name == "image-001.png" and not Path(target).exists():
            Path(target).write_bytes(b"the other process's image")
        return real_link(source, target)

    monkeypatch.setattr(chat.os, "link", racing_link)
    path = chat.save_new_image(Image.new("RGB", (4, 4), "red"), tmp_path)
    assert path.name == "image-002.png" and (tmp_path / "image-001.png").read_bytes() == b"the other process's image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image-001.png", "image-002.png"]  # no temporary left


def test_two_chat_runs_into_one_folder_keep_both_images(saved_tiny_model, tmp_path, capsys, monkeypatch):
    from genllava.chat import ChatSession
    from genllava.data.templates import T2I

    original = ChatSession.reply
    monkeypatch.setattr(ChatSession, "reply", lambda self, text, task=None: original(self, text, task=T2I))
    printed = []
    for seed in (1, 2):
        code, out, err = run(capsys, "chat", "--model", saved_tiny_model, "--message", "Draw a red circle.",
                             "--out-dir", tmp_path, "--seed", seed)
        assert code == 0, err
        printed.append(out.split("[image saved to ", 1)[1].split("]", 1)[0])
    assert printed == [str(tmp_path / "image-001.png"), str(tmp_path / "image-002.png")]
    assert all(Path(p).is_file() for p in printed)


# ---- 7: the edit strength keeps more of the input the lower it is ----------------------------------------

def test_lower_strength_keeps_more_of_the_input_on_the_shapes_decoder():
    from genllava import presets
    from genllava.model.decoder import DiffusionDecoder
    from genllava.shapes.world import Scene, Shape, render

    decoder = DiffusionDecoder.from_pretrained(str(presets.SHAPES_PRETRAINED / "decoder"))
    inputs = [Scene((Shape("red", "circle", "center"),)), Scene((Shape("green", "square", "top left"),))]
    edits = [Scene((Shape("blue", "circle", "center"),)), Scene((Shape("green", "triangle", "top left"),))]
    pictures = [render(scene, decoder.resolution) for scene in inputs]
    reference = np.stack([np.asarray(p, dtype=np.float32) for p in pictures])
    conditioning, negative = decoder.encode_prompt([s.caption() for s in edits]), decoder.encode_prompt([""])
    distances = []
    for strength in (1.0, 0.8, 0.6, 0.45, 0.3):
        drawn = decoder.sample(conditioning, negative, steps=20, guidance_scale=3.0, strength=strength,
                               generator=torch.Generator().manual_seed(0), init_images=decoder.preprocess(pictures))
        distances.append(np.abs(np.stack([np.asarray(d, dtype=np.float32) for d in drawn]) - reference).mean(axis=(1, 2, 3)))
    for lower, higher in zip(distances[1:], distances):
        assert (lower < higher).all(), distances  # for every image, at every step down
    assert (distances[-1] < 0.75 * distances[0]).all(), distances  # measurably, not by a rounding error


# ---- 8: replies end at the end of the assistant's turn ---------------------------------------------------

@pytest.mark.parametrize("marker", ["ASSISTANT:", "USER:"])
def test_a_reply_never_holds_a_role_marker_or_the_next_turn(tiny_model, marker, monkeypatch):
    from genllava.data.conversation import user

    proc = tiny_model.processor
    leaked = (proc._continued(" Sure.") + proc._newline + proc._text(marker) + proc._continued(" Here is a green square")
              + [proc.soi_id])

    def generate(**kwargs):
        return torch.tensor([leaked])

    monkeypatch.setattr(tiny_model.language_model, "generate", generate)
    reply, = tiny_model.generate([[user("What is 2 plus 3?")]], [None])
    assert reply.text == "Sure." and reply.image is None
    assert "ASSISTANT" not in reply.text and "USER" not in reply.text


# ---- 9: quiet, helpful commands ---------------------------------------------------------------------------

def _subcommands(p):
    import argparse

    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub)
    yield p


OWNED_ELSEWHERE = ("genllava web", "genllava serve", "genllava eval bench", "genllava eval generation",
                   "genllava eval editing")


def test_every_option_has_help_and_choices_are_listed():
    missing = []
    for p in _subcommands(parser()):
        if p.prog.startswith(OWNED_ELSEWHERE):
            continue
        for action in p._actions:
            if action.help is None and action.dest != "help" and action.option_strings + [action.dest]:
                if not action.__class__.__name__.startswith("_SubParsers"):
                    missing.append(f"{p.prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    probe = next(p for p in _subcommands(parser()) if p.prog == "genllava eval probe")
    assert "shape_at_position" in probe.format_help()


def test_a_model_load_and_answer_print_nothing_else(saved_tiny_model, tmp_path, capsys):
    code, out, err = run(capsys, "generate", "--model", saved_tiny_model, "--prompt", "A red circle.", "--out",
                         tmp_path / "red.png")
    assert code == 0 and err == "", err
    assert out == f"saved {tmp_path / 'red.png'}\n"


# ---- 1: bugs keep their traceback ------------------------------------------------------------------------

@pytest.mark.parametrize("bug", [lambda: torch.zeros(2) @ torch.zeros(3), lambda: {}["missing"]])
def test_a_bug_keeps_its_traceback(bug, monkeypatch, tmp_path):
    import genllava.cli as cli

    def crash(args):
        bug()

    monkeypatch.setattr(cli, "_chat", crash)
    with pytest.raises((RuntimeError, KeyError)):
        main(["chat", "--model", str(tmp_path), "--message", "hi"])


def test_a_mistake_genllava_reports_is_one_line(monkeypatch, tmp_path, capsys):
    import genllava.cli as cli

    from types import SimpleNamespace

    from genllava.model.decoder import DiffusionDecoder

    def raised_by_genllava(args):  # a RuntimeError genllava raises on purpose, with what to do
        DiffusionDecoder.encode_prompt(SimpleNamespace(text_encoder=None), ["a red circle"])

    monkeypatch.setattr(cli, "_chat", raised_by_genllava)
    refused(capsys, "chat", "--model", tmp_path, "--message", "hi", mentions=["without its text encoder"])
