"""The `genllava` command, run in-process: user mistakes end with exit code 2 and one `error:`
line (no traceback); chat / generate / edit / eval work on a saved tiny model and real photos;
each `genllava shapes pretrain` component comes out as a loadable standard folder."""

from __future__ import annotations

import builtins
import json
from copy import deepcopy
from pathlib import Path

import huggingface_hub.constants
import pytest
from PIL import Image

from genllava import presets
from genllava.cli import main

SIX_KEYS = {"understanding.accuracy", "text.accuracy", "generation.accuracy", "generation.accuracy_heldout",
            "editing.accuracy", "multiturn.accuracy"}


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse refuses a bad option, in one line too
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_user_error(code: int, err: str, *mentions: str) -> str:
    assert code == 2
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for mention in mentions:
        assert mention in lines[0], lines[0]
    return lines[0]


def assert_png(path: Path, size=(32, 32)) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == size and image.mode == "RGB"


# ---- user mistakes ---------------------------------------------------------------------------------------

def test_chat_with_a_missing_image(saved_tiny_model, tmp_path, capsys):
    missing = tmp_path / "nowhere.jpg"
    code, out, err = run(capsys, "chat", "--model", saved_tiny_model, "--image", missing, "--message", "hi",
                         "--out-dir", tmp_path / "chat")
    assert_user_error(code, err, str(missing), "does not exist")
    assert out == ""


def test_chat_with_a_directory_as_image(saved_tiny_model, tmp_path, capsys):
    code, _, err = run(capsys, "chat", "--model", saved_tiny_model, "--image", tmp_path, "--message", "hi",
                       "--out-dir", tmp_path / "chat")
    assert_user_error(code, err, str(tmp_path), "directory")


def test_chat_with_a_corrupt_image(saved_tiny_model, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    code, _, err = run(capsys, "chat", "--model", saved_tiny_model, "--image", corrupt, "--message", "hi",
                       "--out-dir", tmp_path / "chat")
    assert_user_error(code, err, str(corrupt))


@pytest.mark.parametrize("message", ["", "   "])
def test_chat_with_an_empty_message(saved_tiny_model, tmp_path, capsys, message):
    code, _, err = run(capsys, "chat", "--model", saved_tiny_model, "--message", message, "--out-dir", tmp_path)
    assert_user_error(code, err, "empty message")


def test_model_folder_that_is_not_one(tmp_path, capsys):
    code, _, err = run(capsys, "chat", "--model", tmp_path / "absent", "--message", "hi")
    assert_user_error(code, err, "absent")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, _, err = run(capsys, "generate", "--model", tmp_path, "--prompt", "a circle", "--out", tmp_path / "x.png")
    assert_user_error(code, err, "genllava")


def test_model_naming_hub_parts_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    config, _ = presets.preset("genllava-mistral-7b")
    config.save(tmp_path)
    for name in ("model.safetensors", "genllava_processor.json", "language_model/config.json"):  # complete-looking
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}")
    code, _, err = run(capsys, "chat", "--model", tmp_path, "--message", "hi")
    assert_user_error(code, err, "google/siglip-large-patch16-384")


def test_edit_strength_out_of_range(saved_tiny_model, photos, tmp_path, capsys):
    code, _, err = run(capsys, "edit", "--model", saved_tiny_model, "--image", photos[0], "--instruction",
                       "Make it red.", "--out", tmp_path / "e.png", "--strength", "0")
    assert_user_error(code, err, "strength")
    assert not (tmp_path / "e.png").exists()


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["paint"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_user_mistake_prints_only_the_error_line(saved_tiny_model, tmp_path, capsys):
    code, _, err = run(capsys, "chat", "--model", saved_tiny_model, "--image", tmp_path / "nowhere.jpg",
                       "--message", "hi")
    assert code == 2
    assert err.strip().splitlines() == error_lines(err)


# ---- working commands ------------------------------------------------------------------------------------

def test_generate_writes_a_png(saved_tiny_model, tmp_path, capsys):
    out = tmp_path / "red.png"
    code, stdout, err = run(capsys, "generate", "--model", saved_tiny_model, "--prompt",
                            "Generate an image of a red circle at the center.", "--out", out, "--seed", 3)
    assert code == 0, err
    assert_png(out)
    assert f"saved {out}" in stdout
    again = tmp_path / "again.png"
    assert run(capsys, "generate", "--model", saved_tiny_model, "--prompt",
               "Generate an image of a red circle at the center.", "--out", again, "--seed", 3)[0] == 0
    assert again.read_bytes() == out.read_bytes()  # seeded: the same command gives the same image


def test_edit_a_real_photograph(saved_tiny_model, photos, tmp_path, capsys):
    for strength in ("1.0", "0.5"):
        out = tmp_path / f"edited-{strength}.png"
        code, stdout, err = run(capsys, "edit", "--model", saved_tiny_model, "--image", photos[1], "--instruction",
                                "Make the sky purple.", "--out", out, "--strength", strength)
        assert code == 0, err
        assert_png(out)
        assert f"saved {out}" in stdout


def test_chat_about_a_real_photograph(saved_tiny_model, photos, tmp_path, capsys):
    code, stdout, err = run(capsys, "chat", "--model", saved_tiny_model, "--image", photos[2], "--message",
                            "What is in this picture?", "--out-dir", tmp_path / "chat")
    assert code == 0, err
    assert stdout.strip() != "" or any((tmp_path / "chat").glob("*.png"))
    if "[image saved to " in stdout:  # the model may decide to answer with an image
        path = Path(stdout.split("[image saved to ", 1)[1].split("]", 1)[0])
        assert_png(path)


def test_chat_repl_survives_mistakes(saved_tiny_model, photos, tmp_path, capsys, monkeypatch):
    lines = iter([f"/image {tmp_path / 'missing.png'}", "", f"/image {photos[3]}", "What color is it?", "/reset",
                  "What is 2 plus 3?", "/quit", "never read"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    code, stdout, err = run(capsys, "chat", "--model", saved_tiny_model, "--out-dir", tmp_path / "chat")
    assert code == 0, err
    assert next(lines) == "never read"  # stopped at /quit
    assert stdout.count("error:") == 2  # the missing image and the empty line, each on its own
    assert "(image attached; new conversation)" in stdout and "(conversation cleared)" in stdout
    assert stdout.count("genllava> ") == 2


def test_chat_repl_ends_at_end_of_input(saved_tiny_model, tmp_path, capsys, monkeypatch):
    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr(builtins, "input", eof)
    code, _, _ = run(capsys, "chat", "--model", saved_tiny_model, "--out-dir", tmp_path)
    assert code == 0


def test_eval_shapes_writes_the_six_metrics(saved_tiny_model, tmp_path, capsys):
    out = tmp_path / "deep" / "metrics.json"
    code, stdout, err = run(capsys, "eval", "shapes", "--model", saved_tiny_model, "--seed", 7, "--samples", 1,
                            "--out", out)
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert set(payload["metrics"]) == SIX_KEYS
    assert all(0.0 <= v <= 1.0 for v in payload["metrics"].values())
    assert payload["metrics"]["generation.accuracy_heldout"] == payload["generation"]["accuracy_heldout"]
    assert payload["seed"] == 7 and payload["samples"] == 1
    for key in SIX_KEYS:
        assert key in stdout


def test_eval_shapes_compares_two_models_on_the_same_questions(saved_tiny_model, tmp_path, capsys):
    from serving import build_shapes_model

    shapes = build_shapes_model(tmp_path / "shapes" / "model")  # the world LM: answers text questions
    alone, both = tmp_path / "tiny.json", tmp_path / "both.json"
    common = ("--seed", 7, "--samples", 4)
    assert run(capsys, "eval", "shapes", "--model", saved_tiny_model, *common, "--out", alone)[0] == 0
    code, stdout, err = run(capsys, "eval", "shapes", "--model", shapes, "--compare", saved_tiny_model, *common,
                            "--out", both)
    assert code == 0, err
    payload, tiny = json.loads(both.read_text()), json.loads(alone.read_text())
    assert payload["compare"]["metrics"] == tiny["metrics"]  # the same questions as its own run
    assert payload["difference"] == {k: v - tiny["metrics"][k] for k, v in payload["metrics"].items()}
    assert payload["difference"]["text.accuracy"] > 0  # the random tiny LM answers none
    assert "difference" in stdout and all(key in stdout for key in SIX_KEYS)
    # A second folder that is not a model is refused before anything is evaluated.
    code, _, err = run(capsys, "eval", "shapes", "--model", shapes, "--compare", tmp_path / "nothing", "--out", both)
    assert code == 2 and "nothing" in err and "evaluate" not in err


def test_eval_probe_writes_the_probes_and_names_a_bad_kind(saved_tiny_model, tmp_path, capsys):
    out = tmp_path / "probe.json"
    code, stdout, err = run(capsys, "eval", "probe", "--model", saved_tiny_model, "--kind", "count", "--shapes", 2,
                            "--samples", 12, "--out", out)
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert payload["kind"] == "count" and payload["shapes"] == 2 and payload["samples"] == 12
    assert f"{payload['probe_tower']:.3f}" in stdout and "LLM layer 0" in stdout
    code, _, err = run(capsys, "eval", "probe", "--model", saved_tiny_model, "--kind", "size")
    assert code == 2 and len(error_lines(err)) == 1 and "size" in err and "shape_at_position" in err
    code, _, err = run(capsys, "eval", "probe", "--model", saved_tiny_model, "--kind", "count", "--samples", 0)
    assert code == 2 and len(error_lines(err)) == 1 and "--samples" in err and "at least 8" in err


# ---- genllava shapes pretrain ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained_by_cli(tmp_path_factory):
    """Runs `genllava shapes pretrain` for every component, in dependency order, 1-2 steps each."""
    import genllava.shapes.pretrain_decoder as pretrain_decoder
    import genllava.shapes.pretrain_lm as pretrain_lm
    import genllava.shapes.pretrain_vision as pretrain_vision

    root = tmp_path_factory.mktemp("cli-pretrain")
    outputs = {}
    commands = {"tokenizer": ["shapes", "pretrain", "tokenizer", "--out", root / "tokenizer"]}
    for component, steps in (("vision", 1), ("language", 2), ("decoder", 2)):
        commands[component] = ["shapes", "pretrain", component, "--out", root / component, "--batch", 2,
                               "--tokenizer", root / "tokenizer", "--steps", steps, "--seed", 1]
    commands["decoder"] += ["--vae-steps", 1, "--no-eval"]
    commands["language"] += ["--no-eval"]
    for component, argv in commands.items():
        code = main([str(a) for a in argv])
        assert code == 0, component
        outputs[component] = root / component
    return outputs


def test_pretrained_tokenizer_loads(pretrained_by_cli):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained_by_cli["tokenizer"])
    assert len(tokenizer) > 256  # byte-level alphabet plus merges
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    text = "Generate an image of a purple triangle at the top left."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_pretrained_vision_tower_loads(pretrained_by_cli):
    from transformers import AutoImageProcessor, SiglipVisionModel

    model = SiglipVisionModel.from_pretrained(pretrained_by_cli["vision"])
    processor = AutoImageProcessor.from_pretrained(pretrained_by_cli["vision"])
    assert model.config.image_size == 32 and model.config.patch_size == 8
    pixels = processor([Image.new("RGB", (32, 32), "white")], return_tensors="pt").pixel_values
    assert model(pixel_values=pixels).last_hidden_state.shape == (1, 16, model.config.hidden_size)


def test_pretrained_language_model_loads(pretrained_by_cli):
    from transformers import AutoTokenizer, MistralForCausalLM

    model = MistralForCausalLM.from_pretrained(pretrained_by_cli["language"])
    tokenizer = AutoTokenizer.from_pretrained(pretrained_by_cli["language"])
    assert model.config.vocab_size == len(tokenizer)
    assert not model.config.tie_word_embeddings


def test_language_reading_stage_continues_a_saved_lm(pretrained_by_cli, tmp_path, capsys):
    """`--init-from` starts from the first stage's weights (not a fresh LM), `--corpus reading`
    reaches the run, and the report keeps the first stage's report."""
    import torch
    from transformers import MistralForCausalLM

    first = pretrained_by_cli["language"]
    out = tmp_path / "reading"
    code, _, err = run(capsys, "shapes", "pretrain", "language", "--init-from", first, "--corpus", "reading",
                       "--tokenizer", pretrained_by_cli["tokenizer"], "--out", out, "--steps", 2, "--batch", 2,
                       "--lr", 1e-4, "--no-eval")
    assert code == 0, err
    report = json.loads((out / "pretrain_report.json").read_text())
    assert report["corpus"] == "reading" and report["lr"] == 1e-4
    assert report["init_from"] == json.loads((first / "pretrain_report.json").read_text())
    before, after = MistralForCausalLM.from_pretrained(first), MistralForCausalLM.from_pretrained(out)
    moved = [(a - b).abs().max().item() for a, b in zip(after.parameters(), before.parameters())]
    # Two small steps from the first stage: every weight stays close, and training moved some.
    assert max(moved) < 0.05 and max(moved) > 0


def test_pretrained_decoder_loads(pretrained_by_cli):
    from genllava.model.decoder import DiffusionDecoder

    folder = pretrained_by_cli["decoder"]
    decoder = DiffusionDecoder.from_pretrained(str(folder))
    assert decoder.prediction_type == "sample" and decoder.resolution == 32
    assert decoder.encode_prompt(["a red circle"]).shape == (1, 77, decoder.cross_attention_dim)
    report = json.loads((folder / "pretrain_report.json").read_text())
    assert report["unet_steps"] == 2 and report["seed"] == 1  # --steps and --seed reached the run
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert not list(folder.rglob("*.bin"))


def test_cli_pretrained_parts_build_a_genllava(pretrained_by_cli, tiny_config):
    from genllava.model.modeling import GenLlava

    config = deepcopy(tiny_config)
    config.vision_tower = str(pretrained_by_cli["vision"])
    config.language_model = str(pretrained_by_cli["language"])
    config.decoder = str(pretrained_by_cli["decoder"])
    model = GenLlava.build(config)
    assert model.processor.image_seq_length == 16


def test_generate_creates_the_output_folder(saved_tiny_model, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "image.png"
    code, _, err = run(capsys, "generate", "--model", saved_tiny_model, "--prompt", "Draw a red circle.", "--out", out)
    assert code == 0, err
    assert_png(out)
