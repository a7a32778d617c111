"""The VLMEvalKit driver answers VLMEvalKit's interleaved message (an image and a question) with the
model's own answer. Where `vlmeval` cannot be imported (it needs torchvision, which has no wheel for
the CPU-only torch of `make dev`), the driver's class stands on a stand-in with BaseModel's message
contract; the registration test needs the real package and is skipped with that reason."""

from __future__ import annotations

import pytest

from genllava.data.conversation import user
from genllava.data.images import load_image
from genllava.data.templates import I2T
from genllava.eval.vlmeval_driver import GenLlavaVLM, _base_model, _StandInBase
from genllava.model.modeling import GenLlava
from genllava.shapes.world import Scene, Shape, render


def test_driver_answers_a_message_with_an_image_and_a_question(saved_tiny_model, tmp_path):
    path = tmp_path / "red.png"
    render(Scene((Shape("red", "circle", "center"),))).save(path)
    model = GenLlava.from_pretrained(saved_tiny_model)
    vlm = GenLlavaVLM(model=model, max_new_tokens=6)
    question = "What color is the circle?"
    answer = vlm.generate([{"type": "image", "value": str(path)}, {"type": "text", "value": question}],
                          dataset="MMBench_DEV_EN")
    expected, = model.generate([[user(question, has_image=True)]], [load_image(str(path))], task=I2T, max_new_tokens=6)
    assert isinstance(answer, str) and answer == expected.text
    # A plain string is a text-only question.
    text_only, = model.generate([[user("What is 2 plus 3?")]], [None], task=I2T, max_new_tokens=6)
    assert vlm.generate("What is 2 plus 3?") == text_only.text
    with pytest.raises(ValueError, match="without text"):
        vlm.generate([{"type": "image", "value": str(path)}])


@pytest.mark.skipif(_base_model() is _StandInBase, reason="vlmeval cannot be imported here (ms-vlmeval needs "
                    "torchvision, which has no wheel that loads beside the CPU-only torch)")
def test_driver_registers_in_vlmevalkit(saved_tiny_model):
    from vlmeval.config import supported_VLM
    from vlmeval.vlm.base import BaseModel

    from genllava.eval.vlmeval_driver import register

    assert issubclass(GenLlavaVLM, BaseModel)
    register(str(saved_tiny_model), name="genllava-test")
    assert isinstance(supported_VLM["genllava-test"](), GenLlavaVLM)
