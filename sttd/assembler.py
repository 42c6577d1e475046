"""Transcript assembly: putting a session's utterances back in spoken order. No I/O.

:mod:`sttd.core` re-exports :class:`TranscriptAssembler` and :func:`normalise`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def normalise(text: str) -> str:
    """Collapse runs of whitespace and trim: what every final transcript goes through."""
    return " ".join(text.split())


# ------------------------------------------------------- transcript assembly


MAX_EARLY_ITEMS = 8
"""Items with deltas but no commit yet (live models) kept at once; a server sending deltas for
items it never commits cannot grow memory or hold back the finals of real turns."""
MAX_ITEM_CHARS = 20_000
"""Delta text kept per item; beyond it further deltas are ignored (the final text still replaces it)."""


@dataclass
class _Item:
    item_id: str
    deltas: list[str] = field(default_factory=list)
    chars: int = 0
    final: str | None = None
    done: bool = False

    def add(self, delta: str) -> None:
        if not self.done and self.chars + len(delta) <= MAX_ITEM_CHARS:
            self.deltas.append(delta)
            self.chars += len(delta)


class TranscriptAssembler:
    """Puts utterances back in spoken order.

    The service commits turns in order but may complete their transcriptions
    out of order. Each ``committed`` event names its predecessor
    (``previous_item_id``), so items are kept in a list ordered by that chain
    and released from the head only once every earlier item is done
    (completed, failed or abandoned).

    Live models send deltas while the person is still speaking, before the
    turn is committed: such an item waits, with its text so far, among the
    *early* items, and joins the order only when its commit (or its final
    text) arrives, so it never holds back turns committed before it.
    """

    def __init__(self) -> None:
        self._order: list[str] = []
        self._items: dict[str, _Item] = {}
        self._early: dict[str, _Item] = {}

    @property
    def outstanding(self) -> int:
        """Committed utterances whose final text has not been released yet."""
        return len(self._order)

    def committed(self, item_id: str, previous_item_id: str | None) -> None:
        if item_id in self._items:
            return
        self._items[item_id] = self._early.pop(item_id, _Item(item_id))
        if previous_item_id in self._order:
            self._order.insert(self._order.index(previous_item_id) + 1, item_id)
        else:
            # The first turn of a session (or one whose predecessor is already
            # released) follows everything still waiting.
            self._order.append(item_id)

    def delta(self, item_id: str, delta: str) -> str:
        """Add a delta; returns the utterance's text so far."""
        item = self._items.get(item_id) or self._early_item(item_id)
        item.add(delta)
        return normalise("".join(item.deltas))

    def completed(self, item_id: str, transcript: str) -> list[tuple[str, str]]:
        """Record a final transcript; returns the ``(item_id, text)`` now releasable, in order."""
        item = self._item(item_id)
        item.final, item.done = normalise(transcript), True
        return self._release()

    def failed(self, item_id: str) -> list[tuple[str, str]]:
        """Give up on an utterance; later ones are no longer held back by it."""
        self._item(item_id).done = True
        return self._release()

    def abandon_all(self) -> list[tuple[str, str]]:
        """The session that owed these transcripts is gone: release what is complete, drop the rest."""
        for item in self._items.values():
            item.done = True
        self._early.clear()
        return self._release()

    def _early_item(self, item_id: str) -> _Item:
        item = self._early.get(item_id)
        if item is None:
            if len(self._early) >= MAX_EARLY_ITEMS:
                del self._early[next(iter(self._early))]  # the oldest: never committed, never will be
            item = self._early[item_id] = _Item(item_id)
        return item

    def _item(self, item_id: str) -> _Item:
        if item_id not in self._items:
            # A transcription for a turn whose commit we did not see: place it last.
            self.committed(item_id, None)
        return self._items[item_id]

    def _release(self) -> list[tuple[str, str]]:
        released = []
        while self._order and self._items[self._order[0]].done:
            item = self._items.pop(self._order.pop(0))
            if item.final is not None:
                released.append((item.item_id, item.final))
        return released
