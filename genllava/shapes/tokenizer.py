"""The shapes world's tokenizer: a byte-level BPE (so any text, typos included, can be encoded)
trained on the world's text and saved as a standard transformers tokenizer folder."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .corpus import world_text

SPECIAL = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def build_tokenizer(vocab_size: int = 640, seed: int = 0, documents: int = 20000) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(world_text(documents, seed), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=77, **SPECIAL)
