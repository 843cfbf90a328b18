"""How a finished execution's log document is stored: zstd-compressed, tagged by format.

The log of a finished execution is written once and read as it is (`logs.page_document`
splices stored documents together), so it is stored compressed. The first byte says how
a value was written, so formats can change without rewriting old rows:

- `{`: plain JSON (logs written before compression);
- `\\x01`: a zstd frame compressed with the skeleton dictionary (below): the keys of a
  Solder log in their order, which spares each log spelling them out. A seed-shaped log
  of 1,649 bytes takes about 550.
- `\\x02`: compressed with one of its tenant's trained dictionaries (solder/dictionaries.py):
  the tag, the dictionary's id among its tenant's as an unsigned LEB128 varint (one byte
  up to 127), then a zstd frame without zstd's 4-byte magic number (the tag is the magic).
  A seed-shaped log takes about 110 bytes.

A dictionary id names a dictionary of the log's own tenant: reading a log needs its
tenant's dictionary, never another's. Ids are never reused (only a tenant's newest
dictionary can be written with, and only older ones are ever deleted), so an id always
names the dictionary that compressed the frame.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import zstandard

from solder.errors import LogUnreadable

PLAIN = ord("{")
SKELETON = 1
TRAINED = 2
LEVEL = 3

# A raw-content dictionary: the keys and shapes every log repeats, as the renderer writes
# them. Changing it would make stored logs unreadable: a new one needs a new tag.
_SKELETON_DICTIONARY = zstandard.ZstdCompressionDict(
    b'{"executionId":"","startedAt":"2026-11-25T00:00:00.000Z",'
    b'"stoppedAt":"2026-11-25T00:00:00.000Z","finished":true,"results":[{"startedAt":'
    b'"2026-11-25T00:00:00.000Z","stoppedAt":"2026-11-25T00:00:00.000Z","data":[[{"json":'
    b'{},"id":""}]],"connectorId":""}],"inputs":[{"connectorId":"","data":{}}],"userId":"",'
    b'"workflowVersion":1,"status":"succeeded","rerunOf":null,"statusCode":200,"attempts":1,'
    b'"lastError":null,"iteration":0,"error":{"message":""}}',
    dict_type=zstandard.DICT_TYPE_RAWCONTENT,
)
# Level 3's search (dfast) with small tables: a log is a few kilobytes, and a compressor
# with level 3's own tables takes 460 KB of memory, with these 107 KB, for the same
# sizes (108.7 and 108.0 bytes a seed-shaped log, on the benchmark's data set).
_TRAINED_PARAMETERS = zstandard.ZstdCompressionParameters(
    strategy=zstandard.STRATEGY_DFAST,
    window_log=17,
    hash_log=12,
    chain_log=12,
    search_log=2,
    min_match=5,
    format=zstandard.FORMAT_ZSTD1_MAGICLESS,
    write_checksum=False,
    write_dict_id=False,  # the tag's varint says which dictionary
)


class _Skeleton(threading.local):
    """The skeleton's zstd contexts, one pair per thread: a zstd context used by two
    threads at once crashes the process, and the compaction sweep works in threads
    beside the event loop's."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(
            level=LEVEL, dict_data=_SKELETON_DICTIONARY, write_checksum=False, write_dict_id=False
        )
        self.decompressor = zstandard.ZstdDecompressor(dict_data=_SKELETON_DICTIONARY)


_skeleton = _Skeleton()


class _Contexts(threading.local):
    """A trained dictionary's zstd objects in one thread, made when first needed."""

    def __init__(self) -> None:
        self.dictionary: zstandard.ZstdCompressionDict | None = None
        self.compressor: zstandard.ZstdCompressor | None = None
        self.decompressor: zstandard.ZstdDecompressor | None = None


class Dictionary:
    """One trained dictionary of one tenant, ready to compress and decompress with, in
    any thread (each thread gets its own zstd contexts)."""

    __slots__ = ("_contexts", "content", "id", "prefix", "tenant_id")

    def __init__(self, tenant_id: str, id: int, content: bytes) -> None:
        self.tenant_id = tenant_id
        self.id = id
        self.content = content
        self.prefix = prefix(id)
        self._contexts = _Contexts()

    def compress(self, document: bytes) -> bytes:
        contexts = self._contexts
        if contexts.compressor is None:
            contexts.compressor = zstandard.ZstdCompressor(
                dict_data=self._zstd_dictionary(), compression_params=_TRAINED_PARAMETERS
            )
        return self.prefix + contexts.compressor.compress(document)

    def decompress(self, frame: bytes) -> bytes:
        contexts = self._contexts
        if contexts.decompressor is None:
            contexts.decompressor = zstandard.ZstdDecompressor(
                dict_data=self._zstd_dictionary(), format=zstandard.FORMAT_ZSTD1_MAGICLESS
            )
        return contexts.decompressor.decompress(frame)

    def release(self) -> None:
        """Free its zstd contexts (in every thread); they are made again when needed."""
        self._contexts = _Contexts()

    def _zstd_dictionary(self) -> zstandard.ZstdCompressionDict:
        contexts = self._contexts
        if contexts.dictionary is None:
            contexts.dictionary = zstandard.ZstdCompressionDict(
                self.content, dict_type=zstandard.DICT_TYPE_FULLDICT
            )
        return contexts.dictionary


def prefix(dictionary_id: int) -> bytes:
    """The first bytes of every log compressed with this dictionary: the tag, the varint."""
    if dictionary_id < 1:
        raise ValueError(f"dictionary ids start at 1, not {dictionary_id}")
    encoded = bytearray([TRAINED])
    while True:
        low, dictionary_id = dictionary_id & 0x7F, dictionary_id >> 7
        encoded.append(low | (0x80 if dictionary_id else 0))
        if not dictionary_id:
            return bytes(encoded)


def dictionary_id(stored: bytes) -> int | None:
    """Which of its tenant's trained dictionaries a stored log needs; None: none."""
    if stored[0] != TRAINED:
        return None
    return _varint(stored)[0]


def _varint(stored: bytes) -> tuple[int, int]:
    """The dictionary id after the tag, and where the zstd frame starts."""
    value, shift = 0, 0
    for position in range(1, min(len(stored), 6)):
        byte = stored[position]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position + 1
        shift += 7
    raise LogUnreadable("a stored log's dictionary id is cut short: the value is damaged")


def pack(document: bytes, dictionary: Dictionary | None = None) -> bytes:
    """A log document as it is stored: with the tenant's trained dictionary if it has one."""
    if dictionary is not None:
        return dictionary.compress(document)
    return bytes([SKELETON]) + _skeleton.compressor.compress(document)


def unpack(stored: bytes, dictionary: Dictionary | None = None) -> bytes:
    """A stored log document as JSON bytes, whichever format wrote it.

    A log compressed with a trained dictionary needs that dictionary (`dictionary_id`
    says which); without it, `LogUnreadable` says what is missing.
    """
    tag = stored[0]
    if tag == PLAIN:
        return stored
    if tag == SKELETON:
        return _skeleton.decompressor.decompress(stored[1:])
    if tag == TRAINED:
        needed, start = _varint(stored)
        if dictionary is None or dictionary.id != needed:
            raise LogUnreadable(
                f"this log was compressed with dictionary {needed} of its tenant, which "
                "this database does not hold: it cannot be read"
            )
        return dictionary.decompress(stored[start:])
    raise LogUnreadable(f"a stored log in an unknown format (tag {tag}): a newer Solder wrote it")


def train(samples: Sequence[bytes], size: int) -> bytes:
    """A zstd dictionary of at most `size` bytes trained on `samples` (log documents)."""
    pieces: list[bytes | bytearray | memoryview] = list(samples)
    return zstandard.train_dictionary(size, pieces, level=LEVEL).as_bytes()
