"""LoRA training of the language model, as the paper offers (LLaVA's defaults: r=128, alpha=256).

The LM's linear layers get low-rank adapters; the rows of genllava's added tokens (in the input
embedding and in the untied lm_head) train fully through peft's `trainable_token_indices`, which
stores just those rows in the adapter, so the adapter folder stays small; the projector and the
generation head train fully as always. A LoRA model folder holds `language_model_adapter/` (peft)
instead of `language_model/`; `merge_lora` turns it into a plain folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

# peft is imported inside the functions: modeling.py reads ADAPTER_DIR, and a plain model should
# load without paying for (or needing) peft.
ADAPTER_DIR = "language_model_adapter"


def added_token_ids(processor) -> list[int]:
    """Ids of the tokens genllava adds to the base tokenizer: their rows start untrained. Every
    token of templates.ADDED_TOKENS is included, so a token added there later trains (and is saved) too."""
    from ..data import templates

    return sorted({processor.image_token_id, *processor.img_token_ids, *processor.task_ids.values(),
                   processor.soi_id, processor.eoi_id,
                   *processor.tokenizer.convert_tokens_to_ids(list(templates.ADDED_TOKENS))})


def is_lora(model) -> bool:
    """Whether model.language_model is a PeftModel (if peft was never imported, it cannot be)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model.language_model, peft.PeftModel)


def _module_name(language_model, module) -> str:
    return next(name for name, m in language_model.named_modules() if m is module)


def apply_lora(model, r: int = 128, alpha: int = 256, dropout: float = 0.05,
               target_modules: str | list[str] = "all-linear"):
    """Wraps model.language_model with LoRA adapters on its linear layers ("all-linear" leaves the
    lm_head out), plus trainable rows for the added tokens in embed_tokens and lm_head. Everything
    else in the LM is frozen; the projector and generation head keep training. Returns `model`."""
    from peft import LoraConfig, get_peft_model

    if is_lora(model):
        raise ValueError("the language model already carries LoRA adapters")
    lm = model.language_model
    if lm.config.get_text_config().tie_word_embeddings:
        # With tied weights peft would share one set of rows; the paper's Mistral is untied, and
        # a tied LM would need a different save layout, so refuse rather than guess.
        raise ValueError("apply_lora expects an LM with an untied lm_head")
    ids = added_token_ids(model.processor)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM",
        trainable_token_indices={_module_name(lm, lm.get_input_embeddings()): ids,
                                 _module_name(lm, lm.get_output_embeddings()): ids})
    model.language_model = get_peft_model(lm, config)
    return model


def merge_lora(src: str | Path, dst: str | Path) -> Path:
    """Loads the LoRA model folder `src`, folds adapters and token rows into the LM weights, and
    writes a plain model folder `dst` (language_model/ with full weights) that loads without peft."""
    from ..model.modeling import GenLlava

    if not (Path(src) / ADAPTER_DIR).is_dir():  # checked before loading anything
        raise ValueError(f"{src} holds no LoRA adapter ({ADAPTER_DIR}/); nothing to merge")
    model = GenLlava.from_pretrained(src)
    model.language_model = model.language_model.merge_and_unload()
    model.save_pretrained(dst)
    return Path(dst)
