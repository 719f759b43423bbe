"""Text hygiene shared by every reader: counted UTF-8 repair and whitespace-aware splitting of long text.

Invalid UTF-8 is never fatal: each invalid byte sequence becomes U+FFFD and is counted, so the manifest says
how much was repaired. Lone surrogates (possible in JSON escapes) are repaired the same way on encoding.
"""
from __future__ import annotations

import codecs

_REPLACEMENT = "\ufffd"
_counter = [0]


def _count_and_replace(err: UnicodeError):
    _counter[0] += 1
    return _REPLACEMENT, err.end


def _count_and_replace_encode(err: UnicodeError):
    _counter[0] += 1
    return _REPLACEMENT.encode("utf-8"), err.end  # the UTF-8 encoder only accepts ASCII str or bytes here


codecs.register_error("data_prep.count_replace", _count_and_replace)
codecs.register_error("data_prep.count_replace_encode", _count_and_replace_encode)


def decode_utf8(data: bytes | bytearray) -> tuple[str, int]:
    """Decode UTF-8, replacing invalid sequences with U+FFFD; returns (text, number of sequences replaced)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        before = _counter[0]
        text = data.decode("utf-8", errors="data_prep.count_replace")
        return text, _counter[0] - before


def encode_utf8(text: str) -> tuple[bytes, str, int]:
    """UTF-8 bytes of `text`, repairing lone surrogates; returns (bytes, repaired text, number repaired)."""
    try:
        return text.encode("utf-8"), text, 0
    except UnicodeEncodeError:
        before = _counter[0]
        data = text.encode("utf-8", errors="data_prep.count_replace_encode")
        return data, data.decode("utf-8"), _counter[0] - before


def _char_boundary(data: bytes, cut: int) -> int:
    """Move `cut` back to the start of a UTF-8 character (continuation bytes are 0b10xxxxxx)."""
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut


def split_bytes(data: bytes, max_bytes: int) -> list[bytes]:
    """Cut `data` into pieces of at most `max_bytes` whose concatenation is exactly `data`.

    Cuts prefer, within the second half of each window: after a newline, after a sentence end (". ", "! ",
    "? "), before a space; else at a UTF-8 character boundary. So no text is lost and words stay whole
    whenever the text has any whitespace.
    """
    if max_bytes < 8:
        raise ValueError("max_bytes must be >= 8")
    pieces = []
    start, n = 0, len(data)
    while n - start > max_bytes:
        end = start + max_bytes
        lo = start + max_bytes // 2
        cut = data.rfind(b"\n", lo, end)
        if cut >= 0:
            cut += 1
        else:
            cut = max(data.rfind(b". ", lo, end - 1), data.rfind(b"! ", lo, end - 1), data.rfind(b"? ", lo, end - 1))
            if cut >= 0:
                cut += 1
            else:
                cut = data.rfind(b" ", lo + 1, end + 1)
                if cut < 0:
                    cut = _char_boundary(data, end)
                    if cut <= start:  # a window without any character start cannot happen in valid UTF-8
                        cut = end
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


def split_text(text: str, max_chars: int) -> list[str]:
    """`split_bytes` for str, by characters; concatenation of the pieces is exactly `text`."""
    if len(text) <= max_chars:
        return [text]
    # Characters and bytes coincide for ASCII; for other text the byte limit is a conservative proxy.
    return [p.decode("utf-8") for p in split_bytes(text.encode("utf-8", "surrogatepass"), max_chars)]
