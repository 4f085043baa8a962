"""A Ray actor's prepared states on its own device, fetched from the object store once.

States travel through Ray's object store in their portable form (numpy arrays; a torch state
names its tensors, ``analysis.measures.portable_state``). An actor turns each one back into its
live form on the actor's device (a GPU actor: the tensors on its GPU) the first time a tile
needs it and keeps it for the tiles that follow, least recently used first out once the cache
holds more than ``max_bytes``. A new measure spec empties it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from analysis.measures import state_to_device

__all__ = ["StateCache", "state_bytes"]


def state_bytes(state: Mapping[str, Any]) -> int:
    """Bytes held by a state's arrays and tensors (numpy ``nbytes``; torch numel x itemsize)."""
    total = 0
    for v in state.values():
        if hasattr(v, "nbytes") and not hasattr(v, "element_size"):
            total += int(v.nbytes)
        elif hasattr(v, "element_size"):
            total += int(v.numel() * v.element_size())
    return total


class StateCache:
    """Live states by object id, on ``device``, within ``max_bytes`` (least recently used out).

    Args:
        device: where torch states live (``cpu`` / ``cuda``); numpy states are kept as fetched.
        max_bytes: budget of the live states (at least the states of one tile are kept).
    """

    def __init__(self, device: str, max_bytes: int) -> None:
        self.device, self.max_bytes = device, max_bytes
        self._key: str | None = None
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._bytes = 0

    def get(self, spec_key: str, ids: Sequence[str],
            fetch: Callable[[list[str]], list[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
        """The live states of ``ids``; those not cached are fetched together (``fetch``)."""
        if spec_key != self._key:  # another measure: its states are of no further use
            self._states.clear()
            self._bytes, self._key = 0, spec_key
        missing = [i for i in ids if i not in self._states]
        for i, state in zip(missing, fetch(missing) if missing else [], strict=True):
            live = state_to_device(state, self.device)
            self._states[i] = live
            self._bytes += state_bytes(live)
        out = {}
        for i in ids:
            self._states.move_to_end(i)
            out[i] = self._states[i]
        keep = set(ids)
        while self._bytes > self.max_bytes and len(self._states) > len(keep):
            old, state = next(iter(self._states.items()))
            if old in keep:
                break
            del self._states[old]
            self._bytes -= state_bytes(state)
        return out
