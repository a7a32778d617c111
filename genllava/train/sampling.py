"""Where the trainer's examples come from, addressed by position so a resumed run continues with
exactly the examples an uninterrupted run would have seen."""

from __future__ import annotations

import random
from typing import Callable, Iterable, Iterator

from ..data.collate import Example


class InMemoryExamples:
    """A list of examples, reshuffled (by seed) every epoch."""

    def __init__(self, examples: list[Example], seed: int):
        if not examples:
            raise ValueError("no training examples left after filtering; see the skip report")
        self.examples, self.seed = examples, seed
        self._epoch, self._order = None, []

    def _order_of(self, epoch: int) -> list[int]:
        if epoch != self._epoch:  # one shuffle per epoch, not per example
            self._order = list(range(len(self.examples)))
            random.Random(self.seed * 100_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self._order

    def take(self, position: int, count: int) -> list[Example]:
        out = []
        for p in range(position, position + count):
            epoch, offset = divmod(p, len(self.examples))
            out.append(self.examples[self._order_of(epoch)[offset]])
        return out


class StreamedExamples:
    """Examples from a re-iterable stream (e.g. a built mixture's shards), epoch after epoch.

    `open_epoch(epoch)` must yield the same examples in the same order for the same epoch; a jump
    in position (a resume) replays the stream up to it.
    """

    def __init__(self, open_epoch: Callable[[int], Iterable[Example]]):
        self.open_epoch = open_epoch
        self._epoch, self._cursor, self._iterator = 0, 0, None

    def _restart(self, epoch: int) -> Iterator[Example]:
        self._epoch, self._iterator = epoch, iter(self.open_epoch(epoch))
        return self._iterator

    def take(self, position: int, count: int) -> list[Example]:
        if self._iterator is None or position != self._cursor:
            self._restart(0)
            self._cursor = 0
            self._skip(position)
        out = [self._next() for _ in range(count)]
        self._cursor = position + count
        return out

    def _skip(self, count: int) -> None:
        for _ in range(count):
            self._next()

    def _next(self) -> Example:
        for attempt in range(2):
            try:
                return next(self._iterator)
            except StopIteration:
                if attempt:
                    break
                self._restart(self._epoch + 1)
        raise ValueError("the training stream yields no usable examples; see the skip report")
