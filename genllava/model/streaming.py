"""Words as they are written: a transformers streamer for a whole batch.

Hugging Face's TextStreamer takes one row; `RowTextStreamer` follows every row of a batched
`generate` and calls `on_text(row, delta)` with each row's new text. It sends only what can no
longer change: whole words (the word being written waits for the space after it), and nothing
from a role marker on ("USER:", which ends the turn, see `turn_end`). So the deltas of a row add up
to a prefix of that row's final reply; the caller sends the rest of the reply when `generate` ends.
"""

from __future__ import annotations

from typing import Callable

from transformers.generation.streamers import BaseStreamer

from ..data import templates

MARKERS = (templates.USER_PREFIX, templates.ASSISTANT_PREFIX)


class RowTextStreamer(BaseStreamer):
    def __init__(self, decode: Callable[[list[int]], str], rows: int, stop_ids: list[int],
                 on_text: Callable[[int, str], None]):
        self.decode, self.stop_ids, self.on_text = decode, set(stop_ids), on_text
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [""] * rows
        self.done = [False] * rows
        self.prompt_seen = False  # generate first puts the prompt's ids (none with inputs_embeds)

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.tokens), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if token in self.stop_ids:
                self.done[row] = True
                continue
            self.tokens[row].append(token)
            self._send(row, self._settled(row))

    def end(self) -> None:
        pass

    def _settled(self, row: int) -> str:
        """The row's text that no later token can change."""
        text = self.decode(self.tokens[row])
        marks = [i for i in (text.find(m) for m in MARKERS) if i >= 0]
        if marks:  # the model began the next turn: its answer ended before
            self.done[row] = True
            text = text[:min(marks)]
        else:
            text = text[:max(text.rfind(" "), text.rfind("\n"), 0)]
        return text.rstrip()

    def _send(self, row: int, text: str) -> None:
        if len(text) > len(self.sent[row]) and text.startswith(self.sent[row]):
            delta, self.sent[row] = text[len(self.sent[row]):], text
            self.on_text(row, delta)
