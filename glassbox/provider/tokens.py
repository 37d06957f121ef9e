"""Tokens as bytes and as the strings OpenAI's API shows.

GPT-2's tokens are byte sequences: one token can hold half of a UTF-8 character. OpenAI's
legacy completions show such a token as ``bytes:\\xe2\\x80``; chat logprobs give the bytes
as a list of integers. Text is decoded only up to the last complete character while a
sequence is still growing.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 byte values, reversed (``bytes_to_unicode``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def token_byte_table(tokenizer, vocab_size: int) -> list[bytes]:
    """The bytes of every token id below ``vocab_size`` (ids the tokenizer lacks get ``b""``)."""
    decoder = _byte_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    table: list[bytes] = []
    for piece in pieces:
        if piece is None:
            table.append(b"")
        elif all(ch in decoder for ch in piece):
            table.append(bytes(decoder[ch] for ch in piece))
        else:  # a special token such as <|endoftext|>, or a tokenizer that is not byte-level
            table.append(piece.encode("utf-8"))
    table.extend(b"" for _ in range(vocab_size - len(table)))
    return table


def display_token(raw: bytes) -> str:
    """How OpenAI's completions logprobs name a token: its text, or ``bytes:\\x..`` if it is not valid UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def complete_utf8_length(data: bytes) -> int:
    """The length of the longest prefix of ``data`` that does not end inside a UTF-8 character."""
    n = len(data)
    # look back at most 3 bytes for the start of an unfinished multi-byte character
    for back in range(1, min(4, n + 1)):
        byte = data[n - back]
        if byte & 0b1100_0000 == 0b1000_0000:  # a continuation byte: keep looking for the lead byte
            continue
        if byte & 0b1000_0000 == 0:  # ASCII: complete
            return n
        need = 2 if byte & 0b1110_0000 == 0b1100_0000 else 3 if byte & 0b1111_0000 == 0b1110_0000 else 4 if byte & 0b1111_1000 == 0b1111_0000 else 1
        return n if back >= need else n - back
    return n


def decode_complete(data: bytes) -> str:
    """Decode ``data`` up to its last complete character (invalid bytes become U+FFFD)."""
    return data[: complete_utf8_length(data)].decode("utf-8", errors="replace")


def stop_holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop sequence (not to stream yet)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
