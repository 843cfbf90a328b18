"""How a finished execution's log document is stored: zstd-compressed, tagged by format.

The log of a finished execution is written once and read as it is (`logs.page_document`
splices stored documents together), so it is stored compressed: a seed-shaped log of
1,649 bytes takes about 540. The first byte says how a value was written, so formats can
change without rewriting old rows:

- `{`: plain JSON (logs written before compression);
- `\\x01`: a zstd frame compressed with dictionary 1, the skeleton of a Solder log (its
  keys in their order), which spares each log spelling them out.

A later dictionary (say, trained on one workflow's own logs) gets the next tag; the
tags already written must stay readable.
"""

from __future__ import annotations

import zstandard

_PLAIN = ord("{")
_SKELETON = 1

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
_compress = zstandard.ZstdCompressor(
    level=3, dict_data=_SKELETON_DICTIONARY, write_checksum=False, write_dict_id=False
)
_decompress = zstandard.ZstdDecompressor(dict_data=_SKELETON_DICTIONARY)


def pack(document: bytes) -> bytes:
    """A log document as it is stored."""
    return bytes([_SKELETON]) + _compress.compress(document)


def unpack(stored: bytes) -> bytes:
    """A stored log document as JSON bytes, whichever format wrote it."""
    if stored[0] == _PLAIN:
        return stored
    if stored[0] == _SKELETON:
        return _decompress.decompress(stored[1:])
    raise ValueError(
        f"a stored log in an unknown format (tag {stored[0]}): a newer Solder wrote it"
    )
