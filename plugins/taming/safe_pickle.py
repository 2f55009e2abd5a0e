"""Read a `torch.save` zip archive without running its pickle: `.ckpt` files from untrusted sources.

A `.ckpt` is a zip archive whose `data.pkl` is a pickle, and unpickling runs whatever the file names.
So nothing here calls `torch.load`: the archive is read with a restricted unpickler that

* rebuilds tensors and plain containers from a short allow-list of vetted functions (our own tensor
  rebuilders read the `data/<key>` records; storage locations such as "cuda:0" are ignored, all on CPU);
* turns every other class (Lightning callbacks, OmegaConf configs, ...) into an inert `Placeholder` that
  records its constructor arguments and pickled state, without importing its module or running its code;
* refuses the file when the pickle calls anything else (`os.system`, `builtins.eval`, any unknown function),
  naming the call, before anything is executed.

`Checkpoint` keeps the archive open and reads a tensor (`TensorRecord`) only when asked, so converting
never reads optimizer state; `load_checkpoint` reads the whole object.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from vqtoolkit.errors import CheckpointError, VqtError

# Modules a checkpoint has no business naming: referring to any of their globals rejects the file.
_DENIED_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "pty", "socket", "ctypes",
    "code", "codeop", "multiprocessing", "webbrowser", "pickle", "_pickle", "marshal", "io", "_io",
    "tempfile", "signal", "asyncio", "threading", "_thread", "operator", "_operator", "functools", "types",
    "inspect", "pydoc", "timeit", "builtins", "commands", "popen2",
})
# Harmless builtins that pickles call to rebuild containers (protocol 2 pickles sets this way).
_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice}
# Builtin types that OmegaConf metadata refers to (object_type=dict, ...): kept as references, never called.
_BUILTIN_REFERENCES = frozenset({"dict", "list", "tuple", "object", "int", "float", "str", "bytes", "bool"})
# Lower-case callables that callback or hyper-parameter state uses (numpy values, defaultdicts): recorded
# like placeholders, never called.
_RECORDED_FUNCTIONS = frozenset({
    (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "dtype"), ("collections", "defaultdict")})

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


class Placeholder:
    """An object of a class that was not loaded: what the pickle said about it, and nothing runs.

    `target` is the class's `module.name`; `args`/`kwargs` what the pickle passed to it, `state` what it
    passed to `__setstate__`, `items`/`elements` what it stored into it as a dict or list subclass.
    """

    target: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        self.args, self.kwargs = args, kwargs
        self.state: Any = None
        self.items: dict[Any, Any] = {}
        self.elements: list[Any] = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Constructor arguments were recorded by `__new__`; nothing else happens."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<{self.target} (not loaded)>"


class _Reference:
    """A function or builtin type the pickle names but may not call (e.g. OmegaConf's `object_type`)."""

    def __init__(self, target: str, path: Path) -> None:
        self.target, self.path = target, path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _refused(self.path, self.target)

    def __repr__(self) -> str:
        return f"<reference to {self.target}>"


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage:
    """A storage record `data/<key>` of the archive: `numel` elements of `dtype`, not read yet."""

    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class TensorRecord:
    """A tensor of the archive, not read yet: a strided view of a storage.

    Reading waits until the tensor is wanted, so converting never reads optimizer state (twice the
    model's size in a Lightning checkpoint).
    """

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size


def _refused(path: Path, target: str) -> CheckpointError:
    return CheckpointError(
        f"{path} tries to call {target}, which is not one of the tensor rebuilders and plain containers a "
        "checkpoint needs; it was not loaded. Only convert checkpoints from a source you trust.")


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged or not a PyTorch checkpoint: {why}")


def _int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                            for v in value)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles a torch zip archive's `data.pkl` without importing or calling anything unvetted."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self._archive, self._prefix, self._path = archive, prefix, path
        self._placeholders: dict[str, type[Placeholder]] = {}
        self._allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
            ("torch", "Size"): torch.Size,
            ("torch", "device"): torch.device,
            ("_codecs", "encode"): self._encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles written by Python 3 use Python 2 names (__builtin__.set); map them back as
        # the stock unpickler would.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        target = f"{module}.{name}"
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(target, _STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if module == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "builtins" and name in _BUILTIN_REFERENCES:
            return _Reference(target, self._path)
        if module.split(".")[0] in _DENIED_MODULES:
            raise _refused(self._path, target)
        # By convention classes are CapWords and functions lower_case: classes become inert placeholders
        # (calling one only records the arguments), other functions may be named but never called.
        if name[:1].isupper() or (module, name) in _RECORDED_FUNCTIONS:
            if target not in self._placeholders:
                self._placeholders[target] = type(name, (Placeholder,), {"target": target,
                                                                         "__module__": __name__})
            return self._placeholders[target]
        return _Reference(target, self._path)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _damaged(self._path, f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]  # the location ("cpu", "cuda:0") is ignored
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path} holds a storage of type "
                                  f"{getattr(storage_type, 'target', storage_type)!r}, which vqt convert "
                                  f"does not read (supported: {', '.join(_STORAGE_DTYPES)})")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise _damaged(self._path, f"bad storage record {pid!r:.80}")
        name = f"{self._prefix}data/{key}"
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise _damaged(self._path, f"record {name} is missing") from None
        nbytes = numel * torch.empty(0, dtype=storage_type.dtype).element_size()
        if info.file_size != nbytes:
            raise _damaged(self._path, f"record {name} holds {info.file_size} bytes, but is read as "
                                       f"{numel} x {storage_type.name}")
        return _Storage(key, storage_type.dtype, numel)

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRecord:
        size, stride = tuple(size), tuple(stride)
        if not (isinstance(storage, _Storage) and isinstance(offset, int) and offset >= 0
                and _int_tuple(size) and _int_tuple(stride) and len(size) == len(stride)):
            raise _damaged(self._path, "a tensor record has malformed arguments")
        numel = 1
        for s in size:
            numel *= s
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        # Legitimate weights never claim more elements than their storage holds; a pickle that does
        # (stride 0) would make saving allocate without bound.
        if numel and (last >= storage.numel or numel > storage.numel):
            raise _damaged(self._path, f"a tensor of shape {size} lies outside its storage")
        return TensorRecord(storage, offset, size, stride)

    def _rebuild_parameter(self, data: Any, *_: Any) -> TensorRecord:
        if not isinstance(data, TensorRecord):
            raise _damaged(self._path, "a parameter record holds no tensor")
        return data

    def _encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        # Protocol 2 stores `bytes` as _codecs.encode(str, "latin1"); nothing else is accepted.
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise _refused(self._path, "_codecs.encode")
        return text.encode("latin1")


_READ_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError,
                AttributeError, KeyError, IndexError, RuntimeError, OverflowError)


class Checkpoint:
    """An open torch.save archive: `root` is its object with every tensor still a `TensorRecord`."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            raise CheckpointError(f"checkpoint {path} is empty")
        if not zipfile.is_zipfile(path):
            if head.startswith(b"PK"):
                raise CheckpointError(f"{path} is a truncated or damaged zip archive (no central "
                                      "directory); download it again")
            if head.startswith(b"\x80"):
                raise CheckpointError(
                    f"{path} is a plain pickle (PyTorch's legacy pre-1.6 format or pickle.dump); vqt "
                    "convert reads only the zip format torch.save writes since PyTorch 1.6. Re-save it with "
                    "torch.save in an environment you trust, then convert it")
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: expected a zip archive written by "
                                  f"torch.save, but it starts with {head!r}")
        self.path = path
        self._archive = zipfile.ZipFile(path)
        self._raw: dict[str, Tensor] = {}  # storage key -> (nbytes,) uint8
        try:
            self.root = self._unpickle()
        except BaseException:
            self._archive.close()
            raise

    def _unpickle(self) -> Any:
        path, archive = self.path, self._archive
        try:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
            if not pickles:
                raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl)")
            self._prefix = pickles[0][: -len("data.pkl")]
            compressed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
            if compressed:  # torch.save never compresses; a re-packed file could be a decompression bomb
                raise _damaged(path, f"compressed records ({compressed[0]}, ...); torch.save writes them "
                                     "uncompressed")
            byteorder = self._prefix + "byteorder"
            if byteorder in names and archive.read(byteorder) != b"little":
                raise CheckpointError(f"{path} was written on a big-endian machine; vqt convert reads "
                                      "little-endian checkpoints only")
            return _SafeUnpickler(archive, self._prefix, path).load()
        except VqtError:
            raise
        except _READ_ERRORS as e:
            raise _damaged(path, f"{type(e).__name__}: {e}") from None

    def tensor(self, record: TensorRecord) -> Tensor:
        """Read one tensor (its storage once, however many tensors view it) onto the CPU."""
        storage = record.storage
        raw = self._raw.get(storage.key)
        if raw is None:
            name = f"{self._prefix}data/{storage.key}"
            try:
                info = self._archive.getinfo(name)
                raw = torch.empty(info.file_size, dtype=torch.uint8)
                with self._archive.open(info) as f:
                    complete = f.readinto(memoryview(raw.numpy())) == info.file_size
            except _READ_ERRORS as e:
                raise _damaged(self.path, f"record {name}: {type(e).__name__}: {e}") from None
            if not complete:
                raise _damaged(self.path, f"record {name} is truncated")
            self._raw[storage.key] = raw
        return raw.view(storage.dtype).as_strided(record.size, record.stride, record.offset)

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read_tensors(obj: Any, checkpoint: Checkpoint, seen: set[int]) -> Any:
    """`obj` with every tensor record read, in containers and placeholders alike (cycles allowed)."""
    if isinstance(obj, TensorRecord):
        return checkpoint.tensor(obj)
    if id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _read_tensors(value, checkpoint, seen)
    elif isinstance(obj, list):
        obj[:] = [_read_tensors(v, checkpoint, seen) for v in obj]
    elif type(obj) is tuple:
        return tuple(_read_tensors(v, checkpoint, seen) for v in obj)
    elif isinstance(obj, Placeholder):
        obj.args = _read_tensors(obj.args, checkpoint, seen)
        for attr in ("kwargs", "state", "items", "elements"):
            setattr(obj, attr, _read_tensors(getattr(obj, attr), checkpoint, seen))
    return obj


def load_checkpoint(path: str | Path) -> Any:
    """The object a torch.save zip archive holds, loaded without running code from the file.

    Tensors come back on the CPU whatever device they were saved from; objects of classes outside the
    allow-list come back as `Placeholder`.
    """
    with Checkpoint(Path(path)) as checkpoint:
        return _read_tensors(checkpoint.root, checkpoint, set())
