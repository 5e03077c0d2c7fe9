"""FITS header cards read without astropy: :class:`CardIndex`, the index of a header's cards by
keyword whose values are parsed only when asked for (FITS standard 4.0, sec. 4), and the stored
header text back as astropy's :class:`~astropy.io.fits.Header`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archive.errors import HeaderError

CARD = 80  # bytes of a header card (FITS standard 4.0, sec. 3.3.1)
_END_TEXT = "END" + " " * 77


class CardIndex(Mapping):
    """Read-only header view over the raw 80-character cards, parsing values on demand.

    Ingest needs some 25 values of a header of ~100 cards, so cards are indexed by keyword
    (the first occurrence wins, as in astropy; ``HIERARCH ESO DPR TYPE`` is found as
    ``ESO DPR TYPE``) and a value is parsed only when asked for: plain strings, logicals,
    integers and reals here (FITS standard 4.0, sec. 4.2), anything else (long strings
    continued over CONTINUE cards, complex values, D exponents, odd spacing) by astropy's
    :class:`~astropy.io.fits.Card`.
    """

    def __init__(self, text: str):
        #: The cards up to END without trailing blanks, blank cards left out (the stored header).
        self.lines: list[str]
        # keyword -> its card, with any CONTINUE cards appended
        self._cards: dict[str, str]
        self._values: dict[str, Any] = {}
        if "\x00" in text or "HIERARCH" in text or "CONTINUE" in text:
            self._index_by_card(text)
            return
        # The common header (no NUL padding, long strings or HIERARCH cards), in comprehensions
        # rather than card by card: indexing 100 cards is a third of reading a small frame.
        end = text.find(_END_TEXT)
        while end > 0 and end % CARD:
            end = text.find(_END_TEXT, end + 1)
        stop = end if end >= 0 else len(text) - len(text) % CARD
        cards = [text[i : i + CARD] for i in range(0, stop, CARD)]
        self.lines = list(filter(None, map(str.rstrip, cards)))
        index: dict[str, str] = {}
        for card in cards:  # a loop: a quarter quicker than a comprehension over reversed cards
            if card[8:10] == "= ":
                key = card[:8]
                if key not in _COMMENTARY:
                    key = key.rstrip().upper()
                    if key not in index:  # the first card of a keyword wins (as in astropy)
                        index[key] = card
        self._cards = index

    def _index_by_card(self, text: str) -> None:
        """:meth:`__init__` card by card, for any header: NUL padding, HIERARCH, CONTINUE."""
        # appending CONTINUE cards to a list keeps a long string of many of them linear (a
        # string += is quadratic)
        cards: dict[str, list[str]] = {}
        self.lines = []
        previous = None
        for i in range(0, len(text) - CARD + 1, CARD):
            card = text[i : i + CARD]
            line = card.rstrip()
            if not line:
                continue
            if "\x00" in line:  # non-standard NUL padding: blanks, as astropy reads it
                card = card.replace("\x00", " ")
                line = card.rstrip()
                if not line:
                    continue
            if line == "END":
                break
            self.lines.append(line)
            if card[8:10] == "= " and card[:8] not in _COMMENTARY:
                key = card[:8].rstrip().upper()
                if key == "HIERARCH":
                    key = card[9 : card.find("=")].strip().upper()
            elif card.startswith("HIERARCH ") and "=" in card:
                key = card[9 : card.find("=")].strip().upper()
            elif card.startswith("CONTINUE") and previous is not None:
                cards[previous].append(card)
                continue
            else:
                previous = None
                continue
            previous = None
            if key not in cards:
                cards[key] = [card]
                previous = key
        self._cards = {key: parts[0] if len(parts) == 1 else "".join(parts) for key, parts in cards.items()}

    @property
    def stored(self) -> str:
        """The header as the catalogue stores it: :attr:`lines` joined by newlines."""
        return "\n".join(self.lines)

    def get(self, key: str, default: Any = None) -> Any:
        # cached under the key as asked, absent keywords too: normalization asks for some 50
        # keywords of a header, most of them alternatives that are absent
        value = self._values.get(key, _MISSING)
        if value is _MISSING:
            card = self._cards.get(key.upper())
            value = None if card is None else _card_value(card)  # a malformed card raises, uncached
            self._values[key] = value
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.upper() in self._cards

    def __iter__(self):
        return iter(self._cards)

    def __len__(self) -> int:
        return len(self._cards)


_MISSING = object()
#: Commentary keywords (FITS 4.0 sec. 4.4.2.4): never values, even when a "= " follows.
_COMMENTARY = ("COMMENT ", "HISTORY ", "        ")


def _card_value(card: str) -> Any:
    """The value of one card (None for an undefined value)."""
    if len(card) == CARD:
        value = card[10:] if not card.startswith("HIERARCH") else card[card.find("=") + 1 :]
        body = value.lstrip()
        if body.startswith("'"):
            close = body.find("'", 1)
            if close > 0 and body[close + 1 : close + 2] != "'" and "''" not in body[:close] and not body[:close].endswith("&"):
                rest = body[close + 1 :].lstrip()
                if not rest or rest.startswith("/"):
                    return body[1:close].rstrip()
        else:
            token = body.split("/", 1)[0].strip()
            if token in ("T", "F"):
                return token == "T"
            if token == "":
                return None
            if "." not in token and "E" not in token and "e" not in token:  # int() refuses those: no exception to raise
                try:
                    return int(token)
                except ValueError:
                    pass
            if "D" not in token.upper() and "(" not in token:
                try:
                    return float(token)
                except ValueError:
                    pass
    from astropy.io import fits  # imported on first use: plain files never need it

    try:
        value = fits.Card.fromstring(card).value
    except (fits.VerifyError, ValueError) as exc:  # astropy: "Unparsable card ..., fix it first"
        text = card[10:CARD].split("/", 1)[0].strip() if card[8:10] == "= " else card[:CARD].rstrip()
        raise HeaderError(f"{text!r} is not a FITS value (a string needs quotes)") from exc
    return None if isinstance(value, fits.card.Undefined) else value


def header_from_text(text: str):
    """Rebuild an :class:`astropy.io.fits.Header` from the text stored in the catalogue."""
    from astropy.io import fits

    return fits.Header.fromstring(text, sep="\n")
