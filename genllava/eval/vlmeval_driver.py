"""GenLLaVA in VLMEvalKit, without editing VLMEvalKit.

`GenLlavaVLM` is a `vlmeval.vlm.base.BaseModel` subclass whose `generate_inner(message, dataset)`
answers VLMEvalKit's interleaved messages ([{"type": "image", "value": PATH}, {"type": "text",
"value": QUESTION}, ...]) in words ([I2T]): the first image is the turn's image (GenLLaVA reads one
image per turn), the texts joined by newlines are the question.

The launcher registers it in `vlmeval.config.supported_VLM` and hands the rest of the command line
to VLMEvalKit's own runner:

    python -m genllava.eval.vlmeval_driver --genllava-model runs/genllava/model -- \\
        --data MMBench_DEV_EN MME SEEDBench_IMG --model genllava --work-dir runs/vlmeval

`vlmeval` comes from `pip install ms-vlmeval` (or `nvidia-vlmeval`, or a VLMEvalKit checkout on
PYTHONPATH). It imports torchvision, so it runs where a torchvision built for the installed torch
is (a CUDA setup); beside the CPU-only torch of `make dev` it cannot load, and the class then
derives from a stand-in with BaseModel's message handling, which the tests use.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

MODEL_NAME = "genllava"


def _base_model():
    try:
        from vlmeval.vlm.base import BaseModel

        return BaseModel
    except Exception:  # not installed, or its imports fail (e.g. no torchvision for this torch)
        return _StandInBase


class _StandInBase:
    """BaseModel's message contract where vlmeval cannot be imported: a str, a list of str (paths
    are images) or a list of {"type", "value"} dicts, then generate_inner."""

    INTERLEAVE = False
    allowed_types = ["text", "image"]

    def __init__(self):
        self.dump_image_func = None

    def set_dump_image(self, dump_image_func):
        self.dump_image_func = dump_image_func

    def use_custom_prompt(self, dataset):
        return False

    @staticmethod
    def preproc_content(inputs):
        import os

        if isinstance(inputs, str):
            return [{"type": "text", "value": inputs}]
        out = []
        for item in inputs:
            if isinstance(item, dict):
                out.append(item)
            else:
                out.append({"type": "image" if os.path.exists(str(item)) else "text", "value": item})
        return out

    def generate(self, message, dataset=None):
        message = self.preproc_content(message)
        if any(m["type"] not in self.allowed_types for m in message):
            raise ValueError(f"genllava takes text and images, got {sorted({m['type'] for m in message})}")
        return self.generate_inner(message, dataset)


class _GenLlavaAnswers:
    """The answering logic, shared by the vlmeval subclass and the stand-in."""

    def _setup(self, model_path: str, device: str | None = None, dtype: str | None = None,
               max_new_tokens: int = 128, model=None) -> None:
        from ..model.modeling import GenLlava

        self.model = model if model is not None else GenLlava.from_pretrained(model_path, device=device or "auto",
                                                                               dtype=dtype or "auto")
        self.model.eval()
        self.max_new_tokens = max_new_tokens

    def generate_inner(self, message, dataset=None) -> str:
        from ..data.conversation import user
        from ..data.images import load_image
        from ..data.templates import I2T

        images = [m["value"] for m in message if m["type"] == "image"]
        text = "\n".join(str(m["value"]) for m in message if m["type"] == "text").replace("<image>", "").strip()
        if not text:
            raise ValueError("a VLMEvalKit message without text")
        image = load_image(images[0]) if images else None
        reply, = self.model.generate([[user(text, has_image=image is not None)]], [image], task=I2T,
                                     max_new_tokens=self.max_new_tokens)
        return reply.text


def _make_class():
    base = _base_model()

    class GenLlavaVLM(_GenLlavaAnswers, base):
        INTERLEAVE = False

        def __init__(self, model_path: str | None = None, device: str | None = None, dtype: str | None = None,
                     max_new_tokens: int = 128, model=None, **kwargs):
            base.__init__(self)
            self._setup(model_path, device, dtype, max_new_tokens, model)

    GenLlavaVLM.__module__ = __name__
    GenLlavaVLM.__qualname__ = "GenLlavaVLM"
    return GenLlavaVLM


GenLlavaVLM = _make_class()


def register(model_path: str, name: str = MODEL_NAME, **options) -> None:
    """Adds `name` to VLMEvalKit's supported_VLM (its registry of model constructors)."""
    from vlmeval.config import supported_VLM

    supported_VLM[name] = partial(GenLlavaVLM, model_path=model_path, **options)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    ours = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m genllava.eval.vlmeval_driver",
                                description="run VLMEvalKit on a GenLLaVA model folder")
    p.add_argument("--genllava-model", required=True, help="a model folder (genllava train's OUT/model)")
    p.add_argument("--name", default=MODEL_NAME, help="the name to give VLMEvalKit's --model")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args(ours)
    if _base_model() is _StandInBase:
        sys.exit("error: cannot import vlmeval (pip install ms-vlmeval, with a torchvision that loads beside "
                 "your torch, or put a VLMEvalKit checkout on PYTHONPATH)")
    register(args.genllava_model, args.name, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    from vlmeval import run

    sys.argv = ["run.py", *rest]
    run.main()


if __name__ == "__main__":
    main()
