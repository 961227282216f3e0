"""Inline weights read in place: the protobuf wire format of a model's three outer levels.

``onnx.load`` parses a whole model file, copying every weight into the message, and
``onnx.save`` serializes it all again: for a 333 MB model, two copies in memory and most of the
time of a run that rewrites a few hundred small nodes. Here:

- :func:`scan_model` walks ModelProto -> GraphProto -> initializer TensorProto in the file's
  bytes (memory-mapped, never read as a whole) and parses everything except the ``raw_data`` of
  big initializers, which it returns as (initializer index, offset, length) spans of the file.
  The caller points those tensors at the file itself, as external data (modelio.load_model).
- :func:`write_spliced` writes a model whose tensors name spans of a file back with their data
  inline: each level is serialized in two halves around the field that holds the data (protobuf
  writes fields in field-number order, so the halves and the spliced field are the very bytes
  ``SerializeToString`` writes), and the data is copied file to file by the kernel.

Only what onnx's schema fixes is relied on: field numbers (ModelProto.graph 7,
GraphProto.initializer 5, TensorProto.raw_data 9, external_data 13, data_location 14) and the wire
format. Anything unexpected (groups, a second graph field, a tensor that already has external
data) leaves that piece parsed as usual.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA = 9
TENSOR_EXTERNAL_DATA = 13
TENSOR_DATA_LOCATION = 14
_LEN = 2  # wire type of length-delimited fields
_COPY_CHUNK = 64 << 20


class WireError(ValueError):
    """The bytes are not the protobuf this module expects (the caller parses them as usual)."""


@dataclass(frozen=True)
class Span:
    """``length`` bytes at ``offset`` of a file: one initializer's raw_data."""

    index: int  # the initializer's position in GraphProto.initializer
    offset: int
    length: int


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(number: int) -> bytes:
    return encode_varint(number << 3 | _LEN)


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, field start, value start, value end) of each field in buf[start:end];
    the value of a length-delimited field is its payload."""
    pos = start
    while pos < end:
        first = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            vstart = pos
        elif wire == 1:
            vstart, pos = pos, pos + 8
        elif wire == 5:
            vstart, pos = pos, pos + 4
        elif wire == _LEN:
            n, vstart = _varint(buf, pos, end)
            pos = vstart + n
        else:  # groups (wire types 3, 4): never written by onnx
            raise WireError(f"unsupported wire type {wire}")
        if pos > end or number == 0:
            raise WireError("field runs past its message")
        yield number, first, vstart, pos


def scan_model(path: str | os.PathLike[str], min_bytes: int) -> tuple[bytes, list[Span]]:
    """The model file at ``path`` without the ``raw_data`` of initializers of at least
    ``min_bytes`` (serialized ModelProto bytes, to parse), and where those data are in the file.
    Raises WireError when the file is not laid out as expected."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise WireError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                return _scan(buf, size, min_bytes)
            finally:
                buf.release()


def _scan(buf: memoryview, size: int, min_bytes: int) -> tuple[bytes, list[Span]]:
    out = bytearray()
    spans: list[Span] = []
    graphs = 0
    for number, first, vstart, vend in _fields(buf, 0, size):
        if number != MODEL_GRAPH:
            out += buf[first:vend]
            continue
        graphs += 1
        if graphs > 1:  # a repeated singular field merges: leave such files to protobuf
            raise WireError("more than one graph field")
        graph = _scan_graph(buf, vstart, vend, min_bytes, spans)
        out += _tag(MODEL_GRAPH) + encode_varint(len(graph)) + graph
    return bytes(out), spans


def _scan_graph(buf: memoryview, start: int, end: int, min_bytes: int,
                spans: list[Span]) -> bytes:
    out = bytearray()
    index = 0
    run = start  # consecutive fields copied through are appended as one slice
    for number, first, vstart, vend in _fields(buf, start, end):
        if number != GRAPH_INITIALIZER:
            continue
        lazy = _raw_data_span(buf, vstart, vend, min_bytes)
        if lazy is not None:
            out += buf[run:first]
            raw_first, raw_vstart, raw_vend = lazy
            tensor = bytes(buf[vstart:raw_first]) + bytes(buf[raw_vend:vend])
            out += _tag(GRAPH_INITIALIZER) + encode_varint(len(tensor)) + tensor
            spans.append(Span(index, raw_vstart, raw_vend - raw_vstart))
            run = vend
        index += 1
    out += buf[run:end]
    return bytes(out)


def _raw_data_span(buf: memoryview, start: int, end: int,
                   min_bytes: int) -> tuple[int, int, int] | None:
    """(field start, value start, value end) of a TensorProto's raw_data worth leaving in the
    file, or None (small, absent, or the tensor already names external data)."""
    found = None
    for number, first, vstart, vend in _fields(buf, start, end):
        if number in (TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION):
            return None
        if number == TENSOR_RAW_DATA:
            if found is not None:  # repeated: protobuf keeps the last; leave it to protobuf
                return None
            found = (first, vstart, vend)
    if found is None or found[2] - found[1] < min_bytes:
        return None
    return found


# ---- writing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Splice:
    """Data of ``length`` bytes at ``offset`` of ``source``, to be written as a tensor's
    raw_data."""

    source: Path
    offset: int
    length: int


def halves(msg: Message, number: int, skip: frozenset[int] = frozenset()) -> tuple[bytes, bytes]:
    """``msg`` serialized without field ``number`` (and ``skip``), cut where field ``number``
    goes: the bytes of the fields numbered below it and of those above it."""
    head, tail = type(msg)(), type(msg)()
    fields: Any = msg.ListFields()  # (FieldDescriptor, value) pairs; the stubs lack .label
    for fd, value in fields:
        if fd.number == number or fd.number in skip:
            continue
        target = head if fd.number < number else tail
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else \
            fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(target, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(target, fd.name).CopyFrom(value)
        else:
            setattr(target, fd.name, value)
    return head.SerializeToString(), tail.SerializeToString()


Piece = bytes | Splice


def model_pieces(model: Message, splices: dict[int, Splice]) -> list[Piece]:
    """``model`` (an onnx ModelProto) as the bytes ``SerializeToString`` would write if each
    initializer at an index of ``splices`` held that data inline: serialized pieces and the
    splices between them."""
    graph = model.graph  # type: ignore[attr-defined]
    g_pieces: list[Piece] = []
    g_head, g_tail = halves(graph, GRAPH_INITIALIZER)
    g_pieces.append(g_head)
    for k, t in enumerate(graph.initializer):
        s = splices.get(k)
        if s is None:
            body = t.SerializeToString()
            g_pieces.append(_tag(GRAPH_INITIALIZER) + encode_varint(len(body)) + body)
            continue
        t_head, t_tail = halves(t, TENSOR_RAW_DATA,
                                frozenset({TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION}))
        raw_key = _tag(TENSOR_RAW_DATA) + encode_varint(s.length)
        size = len(t_head) + len(raw_key) + s.length + len(t_tail)
        g_pieces += [_tag(GRAPH_INITIALIZER) + encode_varint(size) + t_head + raw_key, s, t_tail]
    g_pieces.append(g_tail)
    m_head, m_tail = halves(model, MODEL_GRAPH)
    g_size = sum(p.length if isinstance(p, Splice) else len(p) for p in g_pieces)
    return [m_head + _tag(MODEL_GRAPH) + encode_varint(g_size), *g_pieces, m_tail]


def pieces_size(pieces: list[Piece]) -> int:
    return sum(p.length if isinstance(p, Splice) else len(p) for p in pieces)


def write_pieces(fd: int, pieces: list[Piece]) -> None:
    """Write ``pieces`` to the file descriptor ``fd`` (at its offset), spliced data copied file
    to file (copy_file_range or sendfile, else read and write in chunks)."""
    pending = bytearray()
    for p in pieces:
        if not isinstance(p, Splice):
            pending += p
            continue
        _write_all(fd, pending)
        pending = bytearray()
        _copy(p, fd)
    _write_all(fd, pending)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy(s: Splice, out_fd: int) -> None:
    src = os.open(s.source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(src).st_size < s.offset + s.length:
            raise OSError(f"{s.source}: changed while read (truncated)")
        done = 0
        for copy in (_copy_file_range, _sendfile, _pread_write):
            done = copy(src, out_fd, s.offset + done, s.length - done, done)
            if done == s.length:
                return
        raise OSError(f"{s.source}: changed while read (truncated)")
    finally:
        os.close(src)


def _copy_file_range(src: int, out: int, offset: int, length: int, done: int) -> int:
    fn = getattr(os, "copy_file_range", None)
    try:
        while length > 0 and fn is not None:
            n = fn(src, out, min(length, _COPY_CHUNK), offset)
            if n == 0:
                break
            offset, length, done = offset + n, length - n, done + n
    except OSError:  # EXDEV, ENOSYS, EINVAL on some file systems: the next way
        pass
    return done


def _sendfile(src: int, out: int, offset: int, length: int, done: int) -> int:
    try:
        while length > 0:
            n = os.sendfile(out, src, offset, min(length, _COPY_CHUNK))
            if n == 0:
                break
            offset, length, done = offset + n, length - n, done + n
    except OSError:
        pass
    return done


def _pread_write(src: int, out: int, offset: int, length: int, done: int) -> int:
    while length > 0:
        chunk = os.pread(src, min(length, _COPY_CHUNK), offset)
        if not chunk:
            break
        _write_all(out, chunk)
        offset, length, done = offset + len(chunk), length - len(chunk), done + len(chunk)
    return done
