"""ShareGPT conversations, cleaned the way Vicuna (FastChat's clean_sharegpt) cleaned them.

Native layout: JSON list(s) (`sg_90k_part1.json`, `sg_90k_part2.json`, or the markdown-converted
`ShareGPT_V3_unfiltered_cleaned_split.json`) of `{"id", "conversations": [{"from", "value"}]}`,
roles "human"/"gpt" (also "user", "chatgpt", "bing", "bard", "system"). Config: `path` = the file(s).

Vicuna's rules: drop a leading assistant turn and a trailing user turn; roles must then alternate;
conversations that mention OpenAI/ChatGPT are dropped; a conversation stops at its first empty turn;
fewer than 16 characters is too short; identical conversations are kept once. Then the conversation
is truncated (never split) to `max_tokens`: whole exchanges are kept while they fit, and if the first
exchange alone does not fit its answer is cut. Tokens are counted with `tokenizer` (a local Hugging
Face tokenizer folder) when given, else estimated as one token per 4 UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import lru_cache

from ..records import Reject
from ..templates import text_answer
from .base import Draft, candidates_of, gpt, human, iter_json_records

TASK = "text"
NEEDS_IMAGES = False
OPTIONS = {"max_tokens": 2048, "tokenizer": None, "blocked_words": ["openai", "chatgpt"], "min_chars": 16,
           "dedup_within": True, "dedup_against": None}
ROLE = {"human": "human", "user": "human", "gpt": "gpt", "chatgpt": "gpt", "bing": "gpt", "bard": "gpt",
        "assistant": "gpt"}
TURN_OVERHEAD = 4  # role prefix, separator and task token around each turn
# Scraping residue FastChat removes: "1 / 2" regenerate counters, "Copy code" and "Copy N chars" buttons.
_NOISE = [(re.compile(r"^\d+ / \d+"), ""), (re.compile(r"Copy\d+ chars / \d+ words"), ""),
          (re.compile(r"```(.*?)Copy code\s*```"), "")]


def files(src):
    return list(src.paths)


def candidates(src) -> list:
    return candidates_of(src.paths, iter_json_records)


def _clean(value: str) -> str:
    for pattern, replacement in _NOISE:
        value = pattern.sub(replacement, value)
    return value.replace("\n\n\n", "\n").strip()


def _turns(item) -> list[tuple[str, str]]:
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        raise Reject("bad_record")
    turns = []
    for turn in item["conversations"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise Reject("bad_record")
        if turn.get("from") == "system":
            continue
        if turn.get("from") not in ROLE:
            raise Reject("bad_record")
        turns.append((ROLE[turn["from"]], turn["value"]))
    return turns


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    """(encode, decode) of a local Hugging Face tokenizer folder."""
    from pathlib import Path

    if (Path(path) / "tokenizer.json").exists():  # the `tokenizers` library alone: a light import
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        return (lambda text: tok.encode(text, add_special_tokens=False).ids), tok.decode
    from transformers import AutoTokenizer  # e.g. sentencepiece-only folders

    tok = AutoTokenizer.from_pretrained(path)
    return (lambda text: tok.encode(text, add_special_tokens=False)), tok.decode


def _counter(tokenizer_path):
    """(count(text) -> tokens, cut(text, n) -> the first n tokens of text)."""
    if tokenizer_path:
        encode, decode = _tokenizer(str(tokenizer_path))
        return (lambda text: len(encode(text))), (lambda text, n: decode(encode(text)[:n]))
    return ((lambda text: (len(text.encode()) + 3) // 4),
            (lambda text, n: text.encode()[: 4 * n].decode(errors="ignore")))


def truncate(turns: list[tuple[str, str]], max_tokens: int, tokenizer_path=None) -> list[tuple[str, str]]:
    count, cut = _counter(tokenizer_path)
    kept, used = [], 0
    for i in range(0, len(turns), 2):
        question, answer = turns[i][1], turns[i + 1][1]
        cost = count(question) + count(answer) + 2 * TURN_OVERHEAD
        if used + cost <= max_tokens:
            kept += turns[i:i + 2]
            used += cost
            continue
        if not kept:  # the first exchange alone is too long: keep the question, cut the answer
            room = max_tokens - count(question) - 2 * TURN_OVERHEAD
            answer = cut(answer, room).strip() if room > 0 else ""
            if not answer:
                raise Reject("too_long")
            kept = [turns[i], ("gpt", answer)]
        break
    return kept


def draft(item, src, rng: random.Random) -> Draft:
    opts = src.options
    turns = _turns(item)
    if turns and turns[0][0] != "human":
        turns = turns[1:]
    if turns and turns[-1][0] != "gpt":
        turns = turns[:-1]
    if len(turns) < 2:
        raise Reject("too_short")
    if any(role != ("human", "gpt")[i % 2] for i, (role, _) in enumerate(turns)):
        raise Reject("not_alternating")
    if any(word in value.lower() for _, value in turns for word in opts["blocked_words"]):
        raise Reject("blocked_words")
    kept = []
    for role, value in turns:
        value = _clean(value)
        if not value or not value[0].isprintable():
            break
        kept.append((role, value))
    kept = kept[: len(kept) // 2 * 2]
    if not kept:
        raise Reject("empty_answer")
    if sum(len(value) for _, value in kept) < opts["min_chars"]:
        raise Reject("too_short")
    kept = truncate(kept, opts["max_tokens"], opts["tokenizer"])
    conversations = [human(value) if role == "human" else gpt(text_answer(value)) for role, value in kept]
    return Draft(origin=str(item.get("id", "")), conversations=conversations)


def dedup_key(item):
    try:
        text = "\x00".join(value for _, value in _turns(item))
    except Reject:
        return None
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()  # lone surrogates: see text.py
