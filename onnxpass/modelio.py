"""Loading and saving models: the one place onnxpass reads or writes a model file.

Loading confines external data the way ``onnx.load`` does, before any of it is read: a location
is relative, resolves inside the folder of the model file, is not a symbolic link, names a
regular file, and its offset and length lie within that file; the length is the tensor's size, as
ONNX Runtime requires.

Saving never writes a file the model reads from, and replaces the output as a pair: the weights go
to a data file with a new name (``OUT.data``, or ``OUT.<hex>.data`` while the previous output
still uses that), which the new model's locations name; the model is renamed into place last and
only then is the previous output's data removed. A kill at any point leaves the old pair or the
new pair. Every file is fsynced before its rename; temp files are ``.OUT.onnxpass-tmp-PID-...``,
and those of runs no longer alive are removed by the next save to the same path. One writer per
output path at a time.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxpass import wire
from onnxpass.errors import ModelLoadError, OnnxpassError
from onnxpass.loadcheck import check_loadable

# A tensor with more elements than this is a "weight": left out of the skeleton used for checking,
# shape inference and opset conversion, so those never copy model weights.
_WEIGHT_ELEMENTS = 1024
_TWO_GB = 2**31 - 1
_ALIGN = 4096  # offsets of tensors in a data file written here (mmap-friendly)
_CHUNK = 16 << 20  # external data is copied in pieces this big, never whole
_TMP_TAG = "onnxpass-tmp"
# Element sizes in bits of the packed types; the rest pack whole bytes (numpy's itemsize).
# getattr: types newer than the oldest onnx supported (1.16).
_SUB_BYTE_BITS = {TensorProto.INT4: 4, TensorProto.UINT4: 4,
                  getattr(TensorProto, "FLOAT4E2M1", -1): 4, getattr(TensorProto, "INT2", -1): 2,
                  getattr(TensorProto, "UINT2", -1): 2}
_UNSIZED = {TensorProto.UNDEFINED, TensorProto.STRING, getattr(TensorProto, "FLOAT6E2M3", -1),
            getattr(TensorProto, "FLOAT6E3M2", -1)}


# ---- loading ------------------------------------------------------------------------------------

def load_model(path: str | os.PathLike[str], *, in_place: bool = False) -> onnx.ModelProto:
    """Load a model; external data stays on disk, named relative to the folder the model file
    resolves to, and is checked (confined, in bounds) here, before anything reads it.

    ``in_place``: the inline data of big initializers is not read either. Those tensors become
    external data whose location is the model file itself (onnxpass/wire.py finds their bytes
    without parsing them); :func:`save_model` writes them back inline, copied file to file. A
    run then costs what it changes, not two copies of every weight; reading such a tensor
    (``numpy_helper.to_array(t, base_dir)``, ``Graph.const_value``) reads just its bytes."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{p}: no such file") from None
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelLoadError(f"{p}: is a directory, not an ONNX model")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block, a device never end
        raise ModelLoadError(f"{p}: not a regular file")
    try:
        model = _load_in_place(p) if in_place else None
        if model is None:
            model = onnx.load(str(p), load_external_data=False)
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read: {e.strerror or e}") from None
    except Exception as e:
        raise ModelLoadError(f"{p}: not an ONNX model ({first_line(e)})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{p}: not an ONNX model (empty or truncated graph)")
    if model.ir_version == 0:
        raise ModelLoadError(f"{p}: not an ONNX model (no IR version)")
    base = p.resolve().parent
    for t in external_tensors(model):
        if not _is_in_place(t, base):
            _locate(t, base, str(p))
    return model


# Model files this process read with ``in_place``: an external location naming one of them is
# inline data left in the file, which saving writes back inline.
_IN_PLACE_SOURCES: set[Path] = set()
_IN_PLACE_BYTES = 4096  # smaller raw_data is parsed: not worth a span


def _load_in_place(p: Path) -> onnx.ModelProto | None:
    """The model at ``p`` with its big inline initializers pointing at ``p`` itself, or None
    when the file is not laid out as onnxpass/wire.py expects (then onnx.load parses it)."""
    from onnxpass import wire

    try:
        data, spans = wire.scan_model(p, _IN_PLACE_BYTES)
    except (wire.WireError, ValueError):  # ValueError: mmap of an empty file
        return None
    model = onnx.ModelProto()
    model.ParseFromString(data)
    if not spans:
        return model
    real = p.resolve()
    inits = model.graph.initializer
    for s in spans:
        t = inits[s.index]
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", real.name), ("offset", str(s.offset)),
                     ("length", str(s.length))):
            t.external_data.add(key=k, value=v)
    _IN_PLACE_SOURCES.add(real)
    return model


def read_in_place(model: onnx.ModelProto, base_dir: str | os.PathLike[str]) -> int:
    """Read the data ``load_model(in_place=True)`` left in the model file into the tensors
    (raw_data, as ``onnx.load`` gives them): for tools that need every weight in memory (the
    ``fold_graphsurgeon`` pass). Returns how many tensors were read."""
    base = Path(base_dir).resolve()
    done = 0
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL and _is_in_place(t, base):
            src, offset, length = _locate(t, base, str(base))
            with open(src, "rb") as f:
                f.seek(offset)
                data = f.read(length)
            if len(data) != length:
                raise ModelLoadError(f"{src}: changed while read (truncated)")
            del t.external_data[:]
            t.ClearField("data_location")
            t.raw_data = data
            done += 1
    return done


def _is_in_place(t: TensorProto, base: Path) -> bool:
    loc = _location(t)
    return bool(loc) and not os.path.isabs(loc) and (base / loc).resolve() in _IN_PLACE_SOURCES


def check_model(model: onnx.ModelProto, source: str = "model") -> None:
    """onnx.checker on the weight-free skeleton; raises ModelLoadError with one line."""
    skel, _ = skeleton(model)
    try:
        onnx.checker.check_model(skel, full_check=False)
    except Exception as e:
        raise ModelLoadError(f"{source}: invalid ONNX graph: {first_line(e)}") from None


def skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose weights are graph inputs instead of initializers: small enough
    to check, infer and convert cheaply. Returns the skeleton and the names of moved weights."""
    skel = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(skel, field, getattr(model, field))
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    g, sg = model.graph, skel.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    input_names = {i.name for i in g.input}
    moved: list[str] = []
    for t in g.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if n > _WEIGHT_ELEMENTS or t.data_location == TensorProto.EXTERNAL:
            moved.append(t.name)
            if t.name not in input_names:
                sg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            sg.initializer.append(t)
    return skel, moved


def referenced_files(model: onnx.ModelProto, base_dir: str | os.PathLike[str]) -> list[Path]:
    """The files ``model``'s external tensors read from (resolved), each once."""
    base = Path(base_dir).resolve()
    locations = {_location(t) for t in external_tensors(model)} - {""}
    return sorted({(base / loc).resolve() for loc in locations})


def _location(t: TensorProto) -> str:
    return next((e.value for e in t.external_data if e.key == "location"), "")


def _locate(t: TensorProto, base: Path, model: str) -> tuple[Path, int, int]:
    """Check one external tensor as onnx.load would; returns (file, offset, length).
    ``base`` is resolved. Raises ModelLoadError naming ``model`` and the problem."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    what = f"{model}: external data of tensor {t.name!r}"
    if not loc or "\0" in loc:
        raise ModelLoadError(f"{what} has no valid location")
    if os.path.isabs(loc):
        raise ModelLoadError(f"{what} is an absolute path ({loc!r}); it must be relative to the "
                             "model's folder")
    target = base / loc
    try:
        st = os.lstat(target)
        real = target.resolve(strict=True)
    except FileNotFoundError:
        if not _inside(target.resolve(), base):
            raise ModelLoadError(f"{what} ({loc!r}) is outside the model's folder") from None
        raise ModelLoadError(f"{model}: external data file {loc!r} of tensor {t.name!r} "
                             "is missing") from None
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ModelLoadError(f"{what} ({loc!r}) cannot be read: "
                             f"{getattr(e, 'strerror', None) or e}") from None
    if not _inside(real, base):
        raise ModelLoadError(f"{what} ({loc!r}) is outside the model's folder")
    if stat.S_ISLNK(st.st_mode):  # onnx.load refuses these even when they point inside
        raise ModelLoadError(f"{what} ({loc!r}) is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{what} ({loc!r}) is not a regular file")
    if not os.access(real, os.R_OK):
        raise ModelLoadError(f"{what} ({loc!r}) cannot be read: permission denied")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelLoadError(f"{what} has a non-integer offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelLoadError(f"{what} has a negative offset or length")
    size, need = st.st_size, _nbytes(t)
    if offset > size:
        raise ModelLoadError(f"{what}: offset {offset} is past the end of {loc!r} "
                             f"({size} bytes)")
    if length is None:
        length = size - offset if need is None else need
    if offset + length > size:
        raise ModelLoadError(f"{what}: {loc!r} is truncated: {length} bytes at offset {offset} "
                             f"needed, the file has {size}")
    if need is not None and length != need:
        raise ModelLoadError(f"{what}: length {length} but a {_type_name(t)} tensor of shape "
                             f"{list(t.dims)} takes {need} bytes")
    return real, offset, length


def _inside(path: Path, base: Path) -> bool:
    return path != base and path.is_relative_to(base)


def _nbytes(t: TensorProto) -> int | None:
    """Bytes of ``t``'s data as raw_data holds it, or None for strings and unknown types."""
    n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    if t.data_type in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[t.data_type] + 7) // 8
    if t.data_type in _UNSIZED:
        return None
    try:
        return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def _type_name(t: TensorProto) -> str:
    try:
        return TensorProto.DataType.Name(t.data_type).lower()
    except ValueError:
        return f"type-{t.data_type}"


# ---- output paths -------------------------------------------------------------------------------

def check_output(out: Path, model: str | os.PathLike[str] | None,
                 reads: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse (OnnxpassError) an output path that is not a regular file or absent, or that is, or
    whose data file would be, the input ``model`` or one of the files it ``reads``."""
    try:
        st = os.stat(out)  # follows a symlink: a link to a device is refused as the device
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OnnxpassError(f"{out}: cannot write: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OnnxpassError(f"{out}: is a directory; -o takes the output file's path")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OnnxpassError(f"{out}: not a regular file (a device, FIFO or socket); "
                            "-o must be a regular file or a new path")
    data = out.with_name(out.name + ".data")
    named = [(model, "the input model")] if model is not None else []
    named += [(p, f"{Path(p).name}, a file the input model reads weights from") for p in reads]
    for p, what in named:
        if _same_file(out, p):
            raise OnnxpassError(f"{out}: output would overwrite {what}")
        if _same_file(data, p):
            raise OnnxpassError(f"{out}: the output's data file would be {what}; choose "
                                "another output name")


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Same file by inode (hard links too) or, for paths not there yet, by resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


# ---- saving -------------------------------------------------------------------------------------

def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], base_dir: str = "") -> None:
    """Write ``model`` to ``path`` (see the module docstring: atomic as a pair, never over a file
    the model reads). Tensors that were external stay external; so does every weight once the
    model would pass 2 GB. ``base_dir``: the folder its external locations are relative to."""
    out = Path(path)
    sources = referenced_files(model, base_dir)
    check_output(out, None, sources)
    check_loadable(skeleton(model)[0], str(out))  # never write what ONNX Runtime would refuse
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out)
        base = Path(base_dir).resolve()
        pieces = _inline_pieces(model, base)
        serialized = None if pieces is not None or any(external_tensors(model)) else \
            _serialize_under_2gb(model)
        data = None
        if serialized is None and pieces is None:
            data, serialized = _write_data(model, out, base, sources)
        body = pieces if pieces is not None else serialized
        assert body is not None  # _write_data always serializes
        try:
            _write_file(out, body)
        except BaseException:
            if data is not None:  # nothing points at it: the old pair is still in place
                data.unlink(missing_ok=True)
            raise
        _fsync_dir(out.parent)
        _remove_data_files(out, keep=[*sources, *([data] if data else [])])
    except OSError as e:
        raise OnnxpassError(f"{out}: cannot write: {e.strerror or e}") from None


def remove_model(path: str | os.PathLike[str]) -> None:
    """Remove a model written by :func:`save_model` and the data file it names (only one named
    after it: a file it shares with its input stays)."""
    out = Path(path)
    try:
        data = referenced_files(onnx.load(str(out), load_external_data=False), out.resolve().parent)
    except Exception:  # not a model (any more): only the file itself goes
        data = []
    out.unlink(missing_ok=True)  # the model first: never a model whose data is gone
    for p in data:
        if _data_pattern(out).fullmatch(p.name) and p.parent == out.resolve().parent:
            p.unlink(missing_ok=True)


def _serialize_under_2gb(model: onnx.ModelProto) -> bytes | None:
    """The serialized model, or None when it passes protobuf's 2 GB limit. Serializes once:
    ``ByteSize()`` would cost a full serialization too (upb encodes to measure; and raises past
    2 GB, as SerializeToString does)."""
    from google.protobuf.message import EncodeError

    try:
        data = model.SerializeToString()
    except (EncodeError, ValueError):
        return None
    return data if len(data) <= _TWO_GB else None


def _write_data(model: onnx.ModelProto, out: Path, base: Path,
                sources: list[Path]) -> tuple[Path, bytes]:
    """Write the weights to a new data file beside ``out``; returns it and the serialized model
    whose locations point at it (``model`` itself keeps pointing at its original data)."""
    final = out.with_name(_new_data_name(out, sources))
    tmp = _temp_path(out, ".data")
    edits: list[tuple[TensorProto, int, int]] = []
    try:
        with _create(tmp) as f:
            offset = 0
            for t, is_weight in _tensors(model):
                if t.data_location == TensorProto.EXTERNAL:
                    src, start, length = _locate(t, base, str(base))
                elif is_weight and t.HasField("raw_data") and len(t.raw_data) > _WEIGHT_ELEMENTS:
                    src, start, length = None, 0, len(t.raw_data)
                else:
                    continue
                pad = (-offset) % _ALIGN
                f.write(b"\0" * pad)
                offset += pad
                if src is None:
                    f.write(t.raw_data)
                else:
                    _copy_range(src, start, length, f)
                edits.append((t, offset, length))
                offset += length
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # a new name: no model points at it yet
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        _fsync_dir(out.parent)  # the data's name is on disk before a model names it
        return final, _serialize_pointing_at(model, edits, final.name)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


def _copy_range(src: Path, start: int, length: int, f: BinaryIO) -> None:
    """Copy ``length`` bytes at ``start`` of ``src`` (checked by _locate) into ``f``."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:  # not a write problem: say which file cannot be read
        raise ModelLoadError(f"{src}: cannot read external data: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since it was checked
            raise ModelLoadError(f"{src}: external data is not a regular file")
        done = 0
        while done < length:
            chunk = os.pread(fd, min(_CHUNK, length - done), start + done)
            if not chunk:
                raise ModelLoadError(f"{src}: external data is truncated (changed while read)")
            f.write(chunk)
            done += len(chunk)
    finally:
        os.close(fd)


def _serialize_pointing_at(model: onnx.ModelProto, edits: list[tuple[TensorProto, int, int]],
                           location: str) -> bytes:
    originals = []
    for t, offset, length in edits:
        originals.append((t, t.data_location, list(t.external_data),
                          t.raw_data if t.HasField("raw_data") else None))
        t.ClearField("raw_data")
        del t.external_data[:]
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=k, value=v)
    try:
        return model.SerializeToString()
    finally:  # the in-memory model keeps pointing at its original data
        for t, loc, ext, raw in originals:
            del t.external_data[:]
            t.external_data.extend(ext)
            t.data_location = loc
            if raw is not None:
                t.raw_data = raw


def _inline_pieces(model: onnx.ModelProto, base: Path) -> list[wire.Piece] | None:
    """``model`` serialized with the data left in place by ``load_model(in_place=True)`` back
    inline, as pieces to write; None when it names other external data, has no such tensor, or
    would pass 2 GB (then :func:`_write_data` writes every weight to a data file)."""
    splices: dict[int, wire.Splice] = {}
    inits = model.graph.initializer
    for k, t in enumerate(inits):
        if t.data_location == TensorProto.EXTERNAL and _is_in_place(t, base):
            src, offset, length = _locate(t, base, str(base))
            splices[k] = wire.Splice(src, offset, length)
    if not splices or sum(1 for _ in external_tensors(model)) != len(splices):
        return None
    pieces = wire.model_pieces(model, splices)
    return pieces if wire.pieces_size(pieces) <= _TWO_GB else None


def _write_file(out: Path, data: bytes | list[wire.Piece]) -> None:
    """Temp file beside ``out``, fsync, rename over ``out``."""
    tmp = _temp_path(out, "")
    try:
        with _create(tmp) as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                f.flush()
                wire.write_pieces(f.fileno(), data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create(path: Path) -> BinaryIO:
    """A new file with the mode a plain open() gives (0666 & ~umask), not mkstemp's 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    return os.fdopen(fd, "wb")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the renames stand anyway
        pass
    finally:
        os.close(fd)


def _new_data_name(out: Path, sources: list[Path]) -> str:
    """``OUT.data`` when no file has that name, else a fresh ``OUT.<hex>.data``."""
    name = out.name + ".data"
    while os.path.lexists(out.with_name(name)) or any(_same_file(out.with_name(name), s)
                                                      for s in sources):
        name = f"{out.name}.{secrets.token_hex(4)}.data"
    return name


def _temp_path(out: Path, suffix: str) -> Path:
    return out.with_name(f".{out.name}.{_TMP_TAG}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _remove_data_files(out: Path, keep: list[Path]) -> None:
    """Remove the data files named after ``out`` (``OUT.data``, ``OUT.<hex>.data``) except
    ``keep``: the previous output's, and those of runs killed before their model was renamed."""
    pattern = _data_pattern(out)
    with os.scandir(out.parent) as entries:
        names = [e.name for e in entries if pattern.fullmatch(e.name)]
    for name in names:
        p = out.with_name(name)
        if not any(_same_file(p, k) for k in keep):
            p.unlink(missing_ok=True)


def _data_pattern(out: Path) -> re.Pattern[str]:
    return re.compile(re.escape(out.name) + r"(\.[0-9a-f]{8})?\.data")


def _remove_stale_temps(out: Path) -> None:
    """Remove temp files of earlier saves to ``out`` whose process is gone."""
    pattern = re.compile(r"\." + re.escape(out.name) + r"\." + _TMP_TAG +
                         r"-(\d+)-[0-9a-f]{8}(\.data)?")
    with os.scandir(out.parent) as entries:
        stale = [e.name for e in entries if (m := pattern.fullmatch(e.name))
                 and not _alive(int(m.group(1)))]
    for name in stale:
        out.with_name(name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


# ---- tensors ------------------------------------------------------------------------------------

def _tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, bool]]:
    """Every tensor that can hold data (initializers, sparse parts, attribute tensors; in the
    graph, its subgraphs and local functions), and whether it is a main-graph weight, which a
    save may move to the data file."""
    yield from _graph_tensors(model.graph, weights=True)
    for f in model.functions:
        yield from _node_tensors(f.node, weights=False)


def _graph_tensors(g: onnx.GraphProto, weights: bool) -> Iterator[tuple[TensorProto, bool]]:
    yield from ((t, weights) for t in g.initializer)
    for s in g.sparse_initializer:
        yield from ((s.values, False), (s.indices, False))
    yield from _node_tensors(g.node, weights)


def _node_tensors(nodes: Iterable[onnx.NodeProto],
                  weights: bool) -> Iterator[tuple[TensorProto, bool]]:
    for n in nodes:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t, weights
            yield from ((t, False) for t in a.tensors)
            sparse = [a.sparse_tensor] if a.HasField("sparse_tensor") else []
            for s in [*sparse, *a.sparse_tensors]:
                yield from ((s.values, False), (s.indices, False))
            for sub in [*([a.g] if a.HasField("g") else []), *a.graphs]:
                yield from _graph_tensors(sub, weights=False)


def external_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """The tensors of ``model`` whose data is in an external file."""
    return (t for t, _ in _tensors(model) if t.data_location == TensorProto.EXTERNAL)


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else text
