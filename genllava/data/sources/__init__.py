"""Readers of the public datasets in their native formats, one module per format.

`READERS` maps a source name (the key in a mixture config, or its `reader:`) to its reader module;
the interface every reader follows is described in `base.py`. LLaVA-Finetune, LVIS-Instruct4V and
ShareGPT4V are distributed in the same LLaVA JSON format, so they share that reader.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import DataError

from . import (ai2d, chartqa, docvqa, dvqa, instructpix2pix, laion_gpt4v, llava_json, llava_pretrain, lrv_instruction,
               sharegpt, synthdog)

READERS: dict[str, ModuleType] = {
    # natural language
    "sharegpt": sharegpt,
    # image editing
    "instructpix2pix": instructpix2pix,
    # image generation
    "llava_pretrain": llava_pretrain,
    # image understanding
    "llava_finetune": llava_json,
    "lvis_instruct4v": llava_json,
    "sharegpt4v": llava_json,
    "llava_json": llava_json,
    "lrv_instruction": lrv_instruction,
    "laion_gpt4v": laion_gpt4v,
    "docvqa": docvqa,
    "synthdog": synthdog,
    "chartqa": chartqa,
    "dvqa": dvqa,
    "ai2d": ai2d,
}


def get_reader(name: str) -> ModuleType:
    try:
        return READERS[name]
    except KeyError:
        raise DataError(f"unknown reader {name!r}; known: {', '.join(sorted(READERS))}") from None
