"""Headers: a read-only, case-insensitive, multi-valued view of header fields.

Rules for this module:
1. Names are lower-cased and values stripped; one pair per header line, in order.
2. The bytes the peer sent are kept (``raw``) and decoded (ISO-8859-1, as RFC 9110
   5.5 allows for field values) only when a handler asks for ``str``.
3. This module imports nothing from the rest of trioserve.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

__all__ = ["Headers"]


class Headers:
    """Header fields as received: case-insensitive and multi-valued.

    ``headers.get("Content-Type")`` returns the first value (``str``) or ``None``;
    ``headers.getall("Accept")`` every value in order; ``headers.items()`` one
    ``(name, value)`` pair per header line, names lower-cased::

        headers = Headers([("Accept", "text/html"), ("accept", "*/*")])
        assert headers.get("ACCEPT") == "text/html"
        assert headers.getall("accept") == ["text/html", "*/*"]
        assert "Accept" in headers and len(headers) == 2

    Values are decoded as ISO-8859-1; ``raw`` holds the bytes pairs.
    """

    __slots__ = ("_items", "_raw")

    _raw: Sequence[tuple[bytes, bytes]]
    _items: list[tuple[str, str]] | None

    def __init__(self, items: Iterable[tuple[str | bytes, str | bytes]] = ()) -> None:
        self._raw = [
            (_to_bytes(name).strip().lower(), _to_bytes(value).strip()) for name, value in items
        ]
        self._items = None

    @classmethod
    def from_raw(cls, raw: Sequence[tuple[bytes, bytes]]) -> Headers:
        """Wrap pairs that are already lower-cased and stripped, without copying."""
        self = cls.__new__(cls)
        self._raw = raw
        self._items = None
        return self

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        """The header lines as ``(name, value)`` bytes pairs, names lower-cased."""
        return list(self._raw)

    def items(self) -> list[tuple[str, str]]:
        """One ``(name, value)`` pair per header line, in the order received."""
        items = self._items
        if items is None:
            items = self._items = [
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw
            ]
        return list(items)

    def keys(self) -> list[str]:
        """The names, lower-cased, once per header line."""
        return [name for name, _ in self.items()]

    def values(self) -> list[str]:
        """The values, once per header line."""
        return [value for _, value in self.items()]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (any case), or ``default`` if there is none."""
        key = name.lower().encode("latin-1")
        for raw_name, value in self._raw:
            if raw_name == key:
                return value.decode("latin-1")
        return default

    def getall(self, name: str) -> list[str]:
        """Every value of ``name`` (any case), in order; empty if there is none."""
        key = name.lower().encode("latin-1")
        return [value.decode("latin-1") for raw_name, value in self._raw if raw_name == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower().encode("latin-1")
        return any(raw_name == key for raw_name, _ in self._raw)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return list(self._raw) == list(other._raw)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container: unhashable like dict

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


def _to_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("latin-1")
