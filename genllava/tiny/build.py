"""Builds the `tiny-mistral` components: the folders of google/siglip-large-patch16-384,
mistralai/Mistral-7B-Instruct-v0.2 and CompVis/stable-diffusion-v1-4, with the same classes and layouts,
scaled down (configs in ./configs) and randomly initialised.

    root/vision/    SiglipModel (text + vision, as google/siglip ships) + SiglipImageProcessor config
    root/language/  MistralForCausalLM + a Mistral-style tokenizer (SentencePiece BPE, byte fallback, "▁")
    root/decoder/   unet/ vae/ scheduler/ text_encoder/ tokenizer/ model_index.json (Stable Diffusion v1.4)

Both tokenizers are trained here with the `tokenizers` library on a fixed corpus, so a build needs no network
and the same seed always gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"
DONE_MARKER = "tiny_mistral.json"  # written last: a folder without it is not a finished build

# Mistral-7B-Instruct-v0.2's chat template: "<s>[INST] question [/INST]answer</s>[INST] ...".
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Ordinary English for the tokenizers, next to the shapes world's text: with it, everyday words get
# multi-character pieces, as they do in Mistral's 32k vocabulary.
ENGLISH = """\
The quick brown fox jumps over the lazy dog. What is the weather like today? It is sunny and warm.
Please describe the picture in detail. There is a cat sitting on a chair next to the window.
The assistant answers questions about images, writes stories and explains things step by step.
Can you tell me more about this photo? A group of people are walking along the beach at sunset.
Generate an image of a mountain lake in the morning. Edit the image so that the sky is blue.
I would like to know where the nearest train station is. The station is two streets away.
Thank you very much for your help. You are welcome, let me know if there is anything else.
Water boils at one hundred degrees. The sun rises in the east and sets in the west.
This is a small model for testing. It has only a few layers and a tiny vocabulary.
How many apples are on the table? There are three apples and one orange on the table.
A young woman is reading a book in the park, while children play football on the grass.
The house has a red door, two large windows and a garden with flowers and trees.
Write a short poem about the sea. The waves are singing, the wind is bringing the salt of the ocean.
"""


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


# The two trained tokenizers ship as files: the `tokenizers` BPE trainer breaks ties between equally frequent
# pairs differently from run to run when it trains in parallel, and the same seed must give the same folder.
# `python -m genllava.tiny.build` retrains and rewrites them.
TOKENIZERS = Path(__file__).parent / "tokenizers"


def _source_files() -> list[Path]:
    return sorted(CONFIGS.glob("*.json")) + sorted(TOKENIZERS.rglob("*.json")) + [Path(__file__)]


def _corpus() -> list[str]:
    """Deterministic text: the chat layout's phrases, shapes-world documents and a little English. Newlines are
    left out, so "\\n" falls back to its byte (<0x0A>) as it does in Mistral's vocabulary."""
    from ..data import templates
    from ..shapes.corpus import world_text

    phrases = [templates.SYSTEM_PROMPT, templates.USER_PREFIX, templates.ASSISTANT_PREFIX,
               *templates.GENERATION, *templates.EDITING, templates.SHORT_VQA, templates.ADVANCED_KNOWLEDGE]
    documents = phrases + list(world_text(1000, 0)) + ENGLISH.splitlines()
    return [" ".join(doc.split()) for doc in documents]


def _version() -> str:
    """Package version plus a digest of the configs, this builder and the tokenizers' corpus: a change to any of
    them is a new cache folder."""
    from .. import __version__

    digest = hashlib.sha256()
    for path in _source_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update("\0".join(_corpus()).encode())
    return f"{__version__}-{digest.hexdigest()[:10]}"


TINY_VERSION = _version()


# ---- tokenizers ----------------------------------------------------------------------------------------------

def build_mistral_tokenizer(vocab_size: int = 1024):
    """A tokenizer laid out as Mistral-7B-Instruct-v0.2's tokenizer.json: SentencePiece BPE with byte fallback,
    <unk> <s> </s> as ids 0/1/2 and the 256 byte pieces <0x00>..<0xFF> as ids 3..258, the "legacy" normalizer
    (prepend "▁", spaces to "▁"), no pre-tokenizer, and a BOS added to every encoding."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    scratch = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Trained on "▁word" pieces, as SentencePiece learns them; merges never cross a word boundary.
    scratch.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    scratch.train_from_iterator(_corpus(), trainer)
    model = json.loads(scratch.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]

    tokenizer = Tokenizer(models.BPE(vocab=model["vocab"], merges=merges, unk_token="<unk>", fuse_unk=True,
                                     byte_fallback=True))
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials[:3]])
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", clean_up_tokenization_spaces=False)


# tokenizer_config.json fields of Mistral-7B-Instruct-v0.2 (no pad token, BOS only).
MISTRAL_TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                            "legacy": True, "pad_token": None, "spaces_between_special_tokens": False,
                            "use_default_system_prompt": False, "chat_template": MISTRAL_CHAT_TEMPLATE}


def save_mistral_tokenizer(tokenizer, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text()) | MISTRAL_TOKENIZER_CONFIG
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_clip_tokenizer(vocab_size: int = 512):
    """A CLIPTokenizer as SD v1.4 ships it: lower-cased byte-level BPE with "</w>" word ends, the 512 byte pieces
    first and <|startoftext|> <|endoftext|> last, padded to CLIP's 77 positions."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    scratch = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    scratch.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
    scratch.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  show_progress=False)
    scratch.train_from_iterator(_corpus(), trainer)
    model = json.loads(scratch.to_str())["model"]
    base = sorted(alphabet) + [c + "</w>" for c in sorted(alphabet)]
    learned = sorted((t for t in model["vocab"] if t not in set(base)), key=model["vocab"].get)
    vocab = {token: i for i, token in enumerate(base + learned + ["<|startoftext|>", "<|endoftext|>"])}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


# ---- models --------------------------------------------------------------------------------------------------

def _save(model, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def build_tiny_components(root: str | Path, seed: int = 0) -> Path:
    """Writes vision/, language/ and decoder/ under `root` and returns it. Each model is initialised right after
    torch.manual_seed(seed), so the same seed gives byte-identical weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import (AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, MistralConfig,
                              MistralForCausalLM, SiglipConfig, SiglipModel)
    from transformers.utils import logging as hf_logging

    root = Path(root)
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Writing model shards" bars for a few kilobytes are noise
    try:
        # vision/: a whole SiglipModel, as google/siglip-* ships; genllava loads its vision half.
        torch.manual_seed(seed)
        _save(SiglipModel(SiglipConfig(**_config("vision"))), root / "vision")
        shutil.copyfile(CONFIGS / "preprocessor.json", root / "vision" / "preprocessor_config.json")

        # language/: Mistral with untied embeddings; its vocabulary is the trained tokenizer's.
        language = _config("language")
        shutil.copytree(TOKENIZERS / "mistral", root / "language")
        language["vocab_size"] = len(AutoTokenizer.from_pretrained(root / "language"))
        torch.manual_seed(seed)
        _save(MistralForCausalLM(MistralConfig(**language)), root / "language")

        # decoder/: Stable Diffusion v1.4's layout.
        decoder = root / "decoder"
        torch.manual_seed(seed)
        _save(UNet2DConditionModel.from_config(_config("unet")), decoder / "unet")
        torch.manual_seed(seed)
        _save(AutoencoderKL.from_config(_config("vae")), decoder / "vae")
        PNDMScheduler.from_config(_config("scheduler")).save_pretrained(decoder / "scheduler")
        text = _config("text_encoder")
        shutil.copytree(TOKENIZERS / "clip", decoder / "tokenizer")
        clip_tokenizer = CLIPTokenizer.from_pretrained(decoder / "tokenizer")
        text |= {"vocab_size": len(clip_tokenizer), "bos_token_id": clip_tokenizer.bos_token_id,
                 "eos_token_id": clip_tokenizer.eos_token_id, "pad_token_id": clip_tokenizer.pad_token_id}
        torch.manual_seed(seed)
        _save(CLIPTextModel(CLIPTextConfig(**text)), decoder / "text_encoder")
        shutil.copyfile(CONFIGS / "model_index.json", decoder / "model_index.json")
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    (root / DONE_MARKER).write_text(json.dumps({"version": TINY_VERSION, "seed": seed}, indent=2) + "\n")
    return root


def default_cache() -> Path:
    return Path(os.environ.get("GENLLAVA_CACHE") or "~/.cache/genllava").expanduser()


def tiny_components(cache: str | Path | None = None) -> Path:
    """The tiny components, built once (seed 0) into `cache`/tiny-mistral-<version> and reused after.

    `cache` defaults to $GENLLAVA_CACHE, else ~/.cache/genllava. The build goes to a temporary folder that is
    then renamed into place, so a reader never sees half a build; when two processes race, one rename wins and
    the other process uses the winner's folder.
    """
    base = Path(cache).expanduser() if cache is not None else default_cache()
    target = base / f"tiny-mistral-{TINY_VERSION}"
    if (target / DONE_MARKER).is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=base))
    try:
        build_tiny_components(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / DONE_MARKER).is_file():  # not a lost race: something else is in the way
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def write_tokenizers(vocab_sizes: tuple[int, int] = (1024, 512)) -> None:
    """Retrains the two tokenizers on the corpus and rewrites the shipped files (genllava/tiny/tokenizers/)."""
    for name in ("mistral", "clip"):
        shutil.rmtree(TOKENIZERS / name, ignore_errors=True)
    save_mistral_tokenizer(build_mistral_tokenizer(vocab_sizes[0]), TOKENIZERS / "mistral")
    build_clip_tokenizer(vocab_sizes[1]).save_pretrained(TOKENIZERS / "clip")


if __name__ == "__main__":
    write_tokenizers()
    print(f"wrote {TOKENIZERS}")
