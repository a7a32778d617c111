"""A chat session: history, the current input image, and generated images saved to disk."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .data.conversation import Message, user
from .data.images import load_image
from .model.modeling import GenLlava, Reply

HELP = "commands: /image PATH (start over with an image), /reset, /quit"
_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(text: str) -> str:
    """Any text a user can type or pass: lone surrogates, and bytes that were not UTF-8 (which Python
    keeps as surrogate escapes in argv and stdin), become U+FFFD instead of crashing the tokenizer."""
    return _SURROGATE.sub("\ufffd", text)


def save_new_image(image, folder: str | Path, stem: str = "image") -> Path:
    """Saves `image` as FOLDER/STEM-NNN.png under the first number not taken, never overwriting a file,
    even with other runs or processes saving into the same folder at once: the PNG is written in
    full to a temporary file, then linked to its name, which fails if another took it first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{stem}-", suffix=".png", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG")
        taken = {m.group(1) for p in folder.iterdir() if (m := re.fullmatch(re.escape(stem) + r"-(\d+)\.png", p.name))}
        number = max((int(n) for n in taken), default=0)
        while True:
            number += 1
            path = folder / f"{stem}-{number:03d}.png"
            try:
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links: an exclusive create, then the bytes
                    with open(path, "xb") as file:
                        file.write(Path(temporary).read_bytes())
                return path
            except FileExistsError:
                continue
    finally:
        os.unlink(temporary)


class ChatSession:
    def __init__(self, model: GenLlava, out_dir: str | Path, seed: int = 0, strength: float = 1.0):
        self.model, self.out_dir, self.seed, self.strength = model, Path(out_dir), seed, strength
        self.history: list[Message] = []
        self.image = None  # the input image the conversation is about
        self.latest = None  # the latest image of the conversation: SDEdit starts from it
        self.saved = 0

    @classmethod
    def open(cls, model_dir: str, out_dir: str | Path, **kwargs) -> "ChatSession":
        return cls(GenLlava.from_pretrained(model_dir), out_dir, **kwargs)

    def attach(self, path: str) -> None:
        """A new input image starts a new conversation about it."""
        self.image, self.history = load_image(path), []
        self.latest = self.image

    def reply(self, text: str, task: str | None = None) -> Reply:
        text = safe_text(text or "")
        if not text.strip():
            raise ValueError("empty message; type a question, a request for an image, or /quit")
        message = user(text.strip(), has_image=self.image is not None and not self.history)
        strength = self.strength if self.latest is not None else 1.0
        reply = self.model.generate([self.history + [message]], [self.image], task=task, seed=self.seed + len(self.history),
                                    strength=strength, init_images=[self.latest])[0]
        if reply.image is not None:
            self.latest = reply.image
        self.history += [message, reply.as_message()]
        return reply

    def say(self, text: str) -> str:
        reply = self.reply(text)
        if reply.image is None:
            return reply.text
        path = save_new_image(reply.image, self.out_dir)
        self.saved += 1
        return (reply.text + "\n" if reply.text else "") + f"[image saved to {path}]"

    def repl(self) -> None:
        import sys

        try:  # bytes typed that are not UTF-8 arrive as surrogate escapes, which safe_text replaces
            sys.stdin.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError, OSError):
            pass
        print(f"genllava chat. {HELP}")
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                return
            if line in ("/quit", "/exit"):
                return
            if line == "/reset":
                self.history, self.image, self.latest = [], None, None
                print("(conversation cleared)")
                continue
            try:
                line = safe_text(line)
                if line.startswith("/image"):
                    self.attach(line[len("/image"):].strip())
                    print("(image attached; new conversation)")
                    continue
                print(f"genllava> {self.say(line)}")
            except ValueError as err:  # bad input ends the turn, not the session
                print(f"error: {err}")
