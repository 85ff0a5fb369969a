"""`TracedMessages`: a real ``list`` whose every mutation becomes a span event of its run.

It is a list subclass so it goes wherever a message list goes (litellm, ``json.dumps``, pydantic,
Kiln's ``trace_ref``) and so the app keeps the list even when the run dies half-way. The events it
writes are enough to replay the list's final state from exported telemetry alone:
insertions carry the message, removals and reorders say exactly what moved.

Two things Kiln does to its lists shaped this class: it deep-copies the list before every model call
(a copy must be a plain list and record nothing) and assigns the list to itself after every turn
(``msgs[:] = same_content`` must record nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, SupportsIndex, overload

if TYPE_CHECKING:
    from kiln_otel.recorder import Recorder

__all__ = ["TracedMessages"]


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def _common_affixes(old: list[Any], new: list[Any]) -> tuple[int, int]:
    """Lengths of the shared prefix and suffix, so a rewrite records only what really changed."""
    limit = min(len(old), len(new))
    prefix = 0
    while prefix < limit and _same(old[prefix], new[prefix]):
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and _same(old[-1 - suffix], new[-1 - suffix]):
        suffix += 1
    return prefix, suffix


class TracedMessages(list[Any]):
    """A message list that records itself. Outside a recording run it is just a list."""

    _recorder: Recorder | None = None

    def _attach(self, recorder: Recorder | None) -> None:
        self._recorder = recorder

    # --- copies are plain lists and record nothing ------------------------------------------------
    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return copy.deepcopy(list(self), memo)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Callable[..., list[Any]], tuple[list[Any]]]:
        return list, (list(self),)

    # --- insertions ---------------------------------------------------------------------------------
    def append(self, item: Any) -> None:
        recorder = self._recorder
        if recorder is None:
            list.append(self, item)
            return
        with recorder.lock:
            recorder.inserted_one(len(self), item)
            list.append(self, item)

    def extend(self, items: Iterable[Any]) -> None:
        recorder = self._recorder
        if recorder is None:
            list.extend(self, items)
            return
        items = list(items)
        with recorder.lock:
            recorder.inserted(len(self), items)
            list.extend(self, items)

    def __iadd__(self, items: Iterable[Any]) -> TracedMessages:  # type: ignore[misc]
        self.extend(items)
        return self

    def __imul__(self, times: SupportsIndex) -> TracedMessages:
        recorder = self._recorder
        if recorder is None:
            list.__imul__(self, times)
            return self
        with recorder.lock:
            count = times.__index__()
            if count <= 0:
                recorder.deleted(0, len(self))
            else:
                recorder.inserted(len(self), list(self) * (count - 1))
            list.__imul__(self, times)
        return self

    def insert(self, index: SupportsIndex, item: Any) -> None:
        recorder = self._recorder
        if recorder is None:
            list.insert(self, index, item)
            return
        with recorder.lock:
            position = index.__index__()
            length = len(self)
            position = max(position + length, 0) if position < 0 else min(position, length)
            recorder.inserted(position, (item,))
            list.insert(self, position, item)

    # --- removals ----------------------------------------------------------------------------------
    def pop(self, index: SupportsIndex = -1) -> Any:
        recorder = self._recorder
        if recorder is None:
            return list.pop(self, index)
        with recorder.lock:
            item = list.pop(self, index)
            position = index.__index__()
            recorder.deleted(position if position >= 0 else position + len(self) + 1, 1)
            return item

    def remove(self, item: Any) -> None:
        recorder = self._recorder
        if recorder is None:
            list.remove(self, item)
            return
        with recorder.lock:
            position = self.index(item)
            recorder.deleted(position, 1)
            list.__delitem__(self, position)

    def clear(self) -> None:
        recorder = self._recorder
        if recorder is None:
            list.clear(self)
            return
        with recorder.lock:
            recorder.deleted(0, len(self))
            list.clear(self)

    @overload
    def __delitem__(self, index: SupportsIndex) -> None: ...
    @overload
    def __delitem__(self, index: slice) -> None: ...
    def __delitem__(self, index: SupportsIndex | slice) -> None:
        recorder = self._recorder
        if recorder is None:
            list.__delitem__(self, index)
            return
        with recorder.lock:
            positions = self._positions(index)
            list.__delitem__(self, index)
            self._record_deletions(recorder, positions)

    # --- rewrites ----------------------------------------------------------------------------------
    @overload
    def __setitem__(self, index: SupportsIndex, value: Any) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[Any]) -> None: ...
    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        recorder = self._recorder
        if recorder is None:
            list.__setitem__(self, index, value)
            return
        with recorder.lock:
            if isinstance(index, slice):
                self._set_slice(recorder, index, list(value))
                return
            old = list.__getitem__(self, index)
            position = self._positions(index)[0]
            list.__setitem__(self, index, value)
            if not _same(old, value):
                recorder.deleted(position, 1)
                recorder.inserted(position, (value,))

    def _set_slice(self, recorder: Recorder, index: slice, new: list[Any]) -> None:
        start, stop, step = index.indices(len(self))
        if step != 1:
            positions = range(start, stop, step)
            old = [self[i] for i in positions]
            list.__setitem__(self, index, new)
            for position, before, after in zip(positions, old, new):
                if not _same(before, after):
                    recorder.deleted(position, 1)
                    recorder.inserted(position, (after,))
            return
        stop = max(stop, start)
        old = list.__getitem__(self, slice(start, stop))
        list.__setitem__(self, index, new)
        prefix, suffix = _common_affixes(old, new)
        recorder.deleted(start + prefix, len(old) - prefix - suffix)
        recorder.inserted(start + prefix, new[prefix : len(new) - suffix])

    def sort(self, *, key: Callable[[Any], Any] | None = None, reverse: bool = False) -> None:
        recorder = self._recorder
        if recorder is None:
            list.sort(self, key=key, reverse=reverse)
            return
        with recorder.lock:
            items = list(self)
            keyed = items if key is None else [key(item) for item in items]
            order = sorted(range(len(items)), key=keyed.__getitem__, reverse=reverse)
            self._apply_order(recorder, items, order)

    def reverse(self) -> None:
        recorder = self._recorder
        if recorder is None:
            list.reverse(self)
            return
        with recorder.lock:
            items = list(self)
            self._apply_order(recorder, items, range(len(items) - 1, -1, -1))

    def _apply_order(self, recorder: Recorder, items: list[Any], order: Iterable[int]) -> None:
        order = list(order)
        list.__setitem__(self, slice(None), [items[i] for i in order])
        if order != list(range(len(order))):
            recorder.reordered(order)

    # --- helpers -----------------------------------------------------------------------------------
    def _positions(self, index: SupportsIndex | slice) -> list[int]:
        """Normalized positions an index or slice touches; raises like ``list`` for a bad index."""
        if isinstance(index, slice):
            return list(range(*index.indices(len(self))))
        position = index.__index__()
        length = len(self)
        if not -length <= position < length:
            raise IndexError("list index out of range")
        return [position + length if position < 0 else position]

    @staticmethod
    def _record_deletions(recorder: Recorder, positions: list[int]) -> None:
        """Deleting highest first keeps every recorded index valid at the moment it is replayed."""
        ordered = sorted(positions, reverse=True)
        run_start = None
        count = 0
        for position in ordered:
            if run_start is not None and position == run_start - 1:
                run_start, count = position, count + 1
                continue
            if run_start is not None:
                recorder.deleted(run_start, count)
            run_start, count = position, 1
        if run_start is not None:
            recorder.deleted(run_start, count)
