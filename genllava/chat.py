"""A chat session: history, the current input image, and generated images saved to disk."""

from __future__ import annotations

from pathlib import Path

from .data.conversation import Message, user
from .data.images import load_image
from .model.modeling import GenLlava, Reply

HELP = "commands: /image PATH (start over with an image), /reset, /quit"


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
        if not text or not text.strip():
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
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.saved += 1
        path = self.out_dir / f"image-{self.saved:03d}.png"
        reply.image.save(path)
        return (reply.text + "\n" if reply.text else "") + f"[image saved to {path}]"

    def repl(self) -> None:
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
                if line.startswith("/image"):
                    self.attach(line[len("/image"):].strip())
                    print("(image attached; new conversation)")
                    continue
                print(f"genllava> {self.say(line)}")
            except ValueError as err:  # bad input ends the turn, not the session
                print(f"error: {err}")
