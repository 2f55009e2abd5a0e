"""Import original taming-transformers checkpoints (`*.ckpt`) as vqtoolkit bundles, without running them.

A `.ckpt` is a `torch.save` zip archive whose `data.pkl` is a pickle, and unpickling runs whatever the file
names. So nothing here calls `torch.load`: `load_checkpoint` reads the archive with a restricted unpickler
that

* rebuilds tensors and plain containers from a short allow-list of vetted functions (our own tensor
  rebuilders read the `data/<key>` records; storage locations such as "cuda:0" are ignored, all on CPU);
* turns every other class (Lightning callbacks, OmegaConf configs, ...) into an inert `Placeholder` that
  records its constructor arguments and pickled state, without importing its module or running its code;
* refuses the file when the pickle calls anything else (`os.system`, `builtins.eval`, any unknown function),
  naming the call, before anything is executed.

`convert_checkpoint` then maps the state dict onto our VQGAN / GPT (whose parameter names follow the
reference), infers the architecture from tensor shapes, takes what shapes cannot tell (resolution,
attention heads, the condition stage's settings) from the published `project.yaml`, and writes a bundle.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import io
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .stage1 import build_vqgan
from .models.quantize import build_quantizer
from .checkpoint import load_state, save_bundle
from .errors import CheckpointError, RecipeError, VqtError
from .fileio import check_new
from .models.transformer import GPT, GPTConfig
from .recipes import ModelConfig, QuantizerConfig

# ---- safe unpickling ----------------------------------------------------------------------------------

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
class _TensorRecord:
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

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRecord:
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
        return _TensorRecord(storage, offset, size, stride)

    def _rebuild_parameter(self, data: Any, *_: Any) -> _TensorRecord:
        if not isinstance(data, _TensorRecord):
            raise _damaged(self._path, "a parameter record holds no tensor")
        return data

    def _encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        # Protocol 2 stores `bytes` as _codecs.encode(str, "latin1"); nothing else is accepted.
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise _refused(self._path, "_codecs.encode")
        return text.encode("latin1")


_READ_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError,
                AttributeError, KeyError, IndexError, RuntimeError, OverflowError)


class _Checkpoint:
    """An open torch.save archive: `root` is its object with every tensor still a `_TensorRecord`."""

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

    def tensor(self, record: _TensorRecord) -> Tensor:
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

    def __enter__(self) -> _Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read_tensors(obj: Any, checkpoint: _Checkpoint, seen: set[int]) -> Any:
    """`obj` with every tensor record read, in containers and placeholders alike (cycles allowed)."""
    if isinstance(obj, _TensorRecord):
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
    with _Checkpoint(Path(path)) as checkpoint:
        return _read_tensors(checkpoint.root, checkpoint, set())


# ---- configs from project.yaml or Lightning hyper_parameters ----------------------------------------

def _plain_data(obj: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """Plain dicts/lists/scalars from a loaded config: OmegaConf and other placeholders unwrapped.

    OmegaConf containers pickle their values under `_content`, value nodes under `_val`; other objects
    (argparse.Namespace, Lightning's AttributeDict) contribute their attributes or dict items. Tensors
    and cycles (OmegaConf's `_parent`) give None.
    """
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if id(obj) in _seen:
        return None
    seen = _seen | {id(obj)}
    if isinstance(obj, dict):
        return {k: _plain_data(v, seen) for k, v in obj.items() if isinstance(k, (str, int))}
    if isinstance(obj, (list, tuple)):
        return [_plain_data(v, seen) for v in obj]
    if isinstance(obj, Placeholder):
        if obj.items:
            return _plain_data(obj.items, seen)
        state = obj.state
        if isinstance(state, dict):
            for key in ("_content", "_val"):
                if key in state:
                    return _plain_data(state[key], seen)
            return _plain_data(state, seen)
        if obj.elements:
            return _plain_data(obj.elements, seen)
    return None


@dataclass(frozen=True)
class _Project:
    """The model section of a taming config: `target` class (None when unknown) and its `params`."""

    target: str | None
    params: dict[str, Any]
    where: str


def _section(value: Any) -> tuple[str | None, dict[str, Any]]:
    """(target, params) of a `{target, params}` sub-config; a bare string such as "__is_unconditional__"."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict):
        target = value.get("target")
        params = value.get("params")
        return (target if isinstance(target, str) else None), (params if isinstance(params, dict) else {})
    return None, {}


def _project_from(data: Any, where: str) -> _Project | None:
    if not isinstance(data, dict) or not data:
        return None
    if isinstance(data.get("model"), dict):  # a whole project.yaml
        target, params = _section(data["model"])
        return _Project(target, params, where)
    if "target" in data:
        target, params = _section(data)
        return _Project(target, params, where)
    return _Project(None, data, where)  # Lightning hyper_parameters: the model's own arguments


def _read_yaml(path: Path) -> _Project:
    try:
        import yaml
    except ImportError:
        raise RecipeError(f"reading {path} needs PyYAML: pip install pyyaml") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RecipeError(f"config {path} is not readable YAML: {e}") from None
    project = _project_from(data, str(path))
    if project is None or project.target is None:
        raise RecipeError(f"config {path} has no 'model: {{target: ..., params: ...}}' section; expected the "
                          "project.yaml published with the checkpoint (e.g. configs/*-project.yaml)")
    return project


def _option(params: dict[str, Any], key: str, where: str, kind: type, default: Any = None) -> Any:
    """`params[key]` checked to be an int (kind=int) or a number (kind=float); None when absent."""
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        raise RecipeError(f"{where}: {key} = {value!r} is invalid: expected {kind.__name__}")
    return kind(value)


# ---- report and architecture inference ---------------------------------------------------------------

@dataclass
class ConvertReport:
    """What `convert_checkpoint` did: the bundle kind, the reference model class it read, the tensors
    and checkpoint entries it left out, the bundle config it wrote, and assumptions worth a look."""

    kind: str  # "stage1" or "stage2"
    source: str  # reference class: VQModel, VQSegmentationModel, GumbelVQ, Net2NetTransformer
    dropped: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the CLI: the kind, dropped tensors grouped by pattern, warnings."""
        groups: dict[str, int] = {}
        for name in self.dropped:
            pattern = re.sub(r"(^|\.)loss\..*", r"\1loss.*", re.sub(r"\.\d+\.", ".*.", name))
            groups[pattern] = groups.get(pattern, 0) + 1
        lines = [f"converted a {self.source} to a {self.kind} bundle"]
        if groups:
            lines.append("dropped: " + ", ".join(f"{p} ({n})" if n > 1 else p for p, n in groups.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _indices(sd: dict[str, Tensor], prefix: str) -> list[int]:
    """Sorted integers i of the keys `prefix{i}.…`."""
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def _shape(sd: dict[str, Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{where}: tensor {key} is missing; expected the parameter layout of a "
                              "taming-transformers model")
    return tuple(sd[key].shape)


def _sub(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _check_layout(module: nn.Module, tensors: dict[str, Tensor], what: str) -> None:
    # `module` lives on the meta device: only the key and shape check of load_state matters, the copy
    # into meta tensors is a no-op that torch warns about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        load_state(module, tensors, what)


def _infer_model(sd: dict[str, Tensor], where: str, ddconfig: dict[str, Any], config_where: str,
                 notes: list[str]) -> ModelConfig:
    ch, in_channels = _shape(sd, "encoder.conv_in.weight", where)[:2]
    levels = _indices(sd, "encoder.down.")
    if levels != list(range(len(levels))) or not levels:
        raise CheckpointError(f"{where}: encoder levels encoder.down.* are missing or not numbered 0..n-1")
    widths = [_shape(sd, f"encoder.down.{i}.block.0.conv1.weight", where)[0] for i in levels]
    if any(w % ch for w in widths):
        raise CheckpointError(f"{where}: level widths {widths} are not multiples of ch = {ch}")
    z_channels = _shape(sd, "encoder.conv_out.weight", where)[0]
    if _shape(sd, "decoder.conv_in.weight", where)[1] != z_channels:
        raise CheckpointError(f"{where}: encoder.conv_out gives {z_channels} channels but decoder.conv_in "
                              "reads a different number (double_z models are not VQGANs)")
    resolution = _option(ddconfig, "resolution", config_where, int)
    if resolution is None:
        resolution = 256
        notes.append(f"{where}: the nominal resolution is not stored in the weights; assumed 256 and "
                     "placed attention to match the weights (pass --config project.yaml to record it)")
    if resolution >> (len(levels) - 1) < 1:
        raise CheckpointError(f"{config_where}: resolution = {resolution} is too small for "
                              f"{len(levels)} levels")
    attn_levels = [i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in sd]
    try:
        return ModelConfig(
            ch=ch, ch_mult=tuple(w // ch for w in widths),
            num_res_blocks=len(_indices(sd, "encoder.down.0.block.")),
            attn_resolutions=tuple(resolution >> i for i in attn_levels), z_channels=z_channels,
            in_channels=in_channels, out_channels=_shape(sd, "decoder.conv_out.weight", where)[0],
            dropout=_option(ddconfig, "dropout", config_where, float, 0.0), resolution=resolution)
    except RecipeError as e:
        raise CheckpointError(f"{where}: the model cannot be represented: {e}") from None


def _infer_quantizer(sd: dict[str, Tensor], where: str, params: dict[str, Any],
                     config_where: str) -> QuantizerConfig:
    if "quantize.used" in sd:
        raise CheckpointError(f"{where}: the quantizer remaps code indices (quantize.used); such models "
                              "are not supported")
    if "quantize.embedding.weight" in sd:
        n_codes, embed_dim = _shape(sd, "quantize.embedding.weight", where)
        # The reference VectorQuantizer2: beta 0.25 on the codebook term, plain nearest-neighbour lookup.
        return QuantizerConfig(kind="vq", n_codes=n_codes, embed_dim=embed_dim, beta=0.25, legacy_beta=True,
                               codebook_dim=0, l2_normalize=False, ema=False, restart_dead=False)
    if "quantize.embed.weight" in sd:
        n_codes, embed_dim = _shape(sd, "quantize.embed.weight", where)
        proj = _shape(sd, "quantize.proj.weight", where)
        if proj[:2] != (n_codes, embed_dim):
            raise CheckpointError(f"{where}: quantize.proj.weight has shape {proj}, expected "
                                  f"({n_codes}, {embed_dim}, 1, 1) (Gumbel models need embed_dim == "
                                  "z_channels)")
        # GumbelVQ's default kl_weight is 1e-8; the VQ-only options stay at their defaults.
        kl_weight = _option(params, "kl_weight", config_where, float, 1e-8)
        return QuantizerConfig(kind="gumbel", n_codes=n_codes, embed_dim=embed_dim, kl_weight=kl_weight)
    raise CheckpointError(f"{where}: no codebook (quantize.embedding.weight or quantize.embed.weight); "
                          "expected a taming-transformers VQModel or GumbelVQ")


@dataclass
class _Stage1:
    model: ModelConfig
    quantizer: QuantizerConfig
    tensors: dict[str, Tensor]  # our VQGAN's state-dict names
    n_labels: int | None  # segmentation models: the `colorize` buffer's label count

    def config(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model), "quantizer": dataclasses.asdict(self.quantizer)}


def _convert_vqgan(sd: dict[str, Tensor], prefix: str, params: dict[str, Any], config_where: str,
                   where: str, report: ConvertReport) -> _Stage1:
    """One VQGAN under `prefix` (e.g. "first_stage_model."): infer, drop loss/colorize, check layout."""
    kept: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("loss.") or key == "colorize":
            report.dropped.append(prefix + key)
        else:
            kept[key] = value
    ddconfig = params.get("ddconfig") if isinstance(params.get("ddconfig"), dict) else {}
    model = _infer_model(kept, where, ddconfig, config_where, report.warnings)
    quantizer = _infer_quantizer(kept, where, params, config_where)
    # Our quantizers keep usage bookkeeping the reference lacks: start it fresh.
    for name, buffer in build_quantizer(quantizer).named_buffers():
        kept.setdefault(f"quantize.{name}", buffer)
    with torch.device("meta"):
        vqgan = build_vqgan(model, quantizer)
    _check_layout(vqgan, kept, f"{where} (a taming-transformers VQGAN)")
    n_labels = int(sd["colorize"].shape[1]) if "colorize" in sd else None
    return _Stage1(model, quantizer, kept, n_labels)


def _stage1_condition(stage: _Stage1, name: str | None) -> dict[str, Any]:
    if name == "segmentation":
        return {"name": name, "options": {"n_labels": stage.n_labels or stage.model.in_channels}}
    return {"name": name, "options": {}} if name else {}


# ---- conversion -----------------------------------------------------------------------------------

def convert_checkpoint(src: str | Path, dst: str | Path, *, config: str | Path | None = None,
                       force: bool = False, condition: str | None = None,
                       n_head: int | None = None) -> ConvertReport:
    """Convert a taming-transformers checkpoint `src` (.ckpt) into a vqtoolkit bundle at `dst`.

    `config`: the project.yaml published with the checkpoint; it supplies what weights cannot tell
    (nominal resolution, attention heads, the condition stage's settings). Without it, Lightning
    `hyper_parameters` stored in the checkpoint are used when present. `condition` names the modality of a
    VQGAN condition stage (e.g. "depth"); `n_head` overrides the transformer's head count.
    """
    src, dst = Path(src), Path(dst)
    check_new(dst, force)  # before reading a multi-gigabyte file
    with _Checkpoint(src) as checkpoint:
        root = checkpoint.root
        if not isinstance(root, dict):
            raise CheckpointError(f"{src} holds a {type(root).__name__}, not a checkpoint dict")
        records = root.get("state_dict", root)
        if not isinstance(records, dict) or not records or \
                not all(isinstance(k, str) and isinstance(v, _TensorRecord) for k, v in records.items()):
            found = ", ".join(map(repr, list(root)[:6]))
            raise CheckpointError(f"{src} has no state_dict of named tensors (top-level entries: {found})")
        state_dict = {k: checkpoint.tensor(v) for k, v in records.items()}  # nothing else is read
    extra = [str(k) for k in root if k != "state_dict"] if records is not root else []

    project = _read_yaml(Path(config)) if config is not None else \
        _project_from(_plain_data(root.get("hyper_parameters")), f"{src} (hyper_parameters)")
    is_stage2 = any(k.startswith("transformer.") for k in state_dict)
    if project is not None and project.target and project.target.endswith("Net2NetTransformer") != is_stage2:
        held = "a Net2NetTransformer" if is_stage2 else "a VQGAN"
        raise CheckpointError(f"{project.where} describes a {project.target}, but {src} holds {held}; "
                              "pass the config that belongs to this checkpoint")
    if is_stage2:
        report = ConvertReport("stage2", "Net2NetTransformer", dropped=extra)
        tensors, bundle_config = _convert_net2net(state_dict, src, project, condition, n_head, report)
        cond_meta = bundle_config["condition"]
    else:
        report = ConvertReport("stage1", "VQModel", dropped=extra)
        tensors, bundle_config, cond_meta = _convert_stage1(state_dict, src, project, condition, report)
    report.config = bundle_config
    save_bundle(dst, tensors, kind=report.kind, config=bundle_config, condition=cond_meta, force=force)
    return report


def _convert_stage1(sd: dict[str, Tensor], src: Path, project: _Project | None, condition: str | None,
                    report: ConvertReport) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    params, where = (project.params, project.where) if project else ({}, str(src))
    target = (project.target if project else None) or ""
    stage = _convert_vqgan(sd, "", params, where, str(src), report)
    segmentation = target.endswith("VQSegmentationModel") or (not target and stage.n_labels is not None)
    if stage.quantizer.kind == "gumbel":
        report.source = "GumbelVQ"
    elif segmentation:
        report.source = "VQSegmentationModel"
    cond = _stage1_condition(stage, condition or ("segmentation" if segmentation else None))
    config = stage.config()
    if cond:  # as Stage1Model.config() records a condition stage
        config["condition"] = cond
    return {f"vqgan.{k}": v for k, v in stage.tensors.items()}, config, cond


_UNCONDITIONAL = ("__is_unconditional__", "taming.modules.util.SOSProvider")


def _convert_net2net(sd: dict[str, Tensor], src: Path, project: _Project | None, condition: str | None,
                     n_head: int | None, report: ConvertReport) -> tuple[dict[str, Tensor], dict[str, Any]]:
    params, where = (project.params, project.where) if project else ({}, str(src))
    permuter, _ = _section(params.get("permuter_config"))
    if any(k.startswith("permuter.") for k in sd) or (permuter and not permuter.endswith(".Identity")):
        raise CheckpointError(
            f"{src} uses the permuter {permuter or 'that stores permuter.* tensors (not Identity)'}, which "
            "orders tokens other than row by row; vqtoolkit generates in raster order, so only "
            "taming.modules.transformer.permuter.Identity converts")
    unknown = [k for k in sd if not k.startswith(("first_stage_model.", "cond_stage_model.", "transformer."))]
    if unknown:
        raise CheckpointError(f"{src}: unexpected tensors {', '.join(unknown[:5])} in a Net2NetTransformer")

    first_params = _section(params.get("first_stage_config"))[1]
    first = _convert_vqgan(_sub(sd, "first_stage_model."), "first_stage_model.", first_params,
                           f"{where} first_stage_config", f"{src} (first_stage_model.*)", report)
    tensors = {f"vqgan.{k}": v for k, v in first.tensors.items()}
    config: dict[str, Any] = {"first_stage": first.config()}

    cond_target, cond_params = _section(params.get("cond_stage_config"))
    cond_sd = _sub(sd, "cond_stage_model.")
    if cond_sd:
        cond = _convert_vqgan(cond_sd, "cond_stage_model.", cond_params, f"{where} cond_stage_config",
                              f"{src} (cond_stage_model.*)", report)
        segmentation = cond.n_labels is not None or (cond_target or "").endswith("VQSegmentationModel")
        key = params.get("cond_stage_key") if isinstance(params.get("cond_stage_key"), str) else None
        name = condition or ("segmentation" if segmentation else key)
        if not name:
            raise CheckpointError(
                f"{src}: the condition stage is a VQGAN (cond_stage_model.*), but what it encodes is not "
                "recorded; pass --condition NAME (e.g. depth; see 'vqt plugins')")
        tensors.update({f"cond.{k}": v for k, v in cond.tensors.items()})
        config["cond_stage"] = cond.config()
        config["condition"] = _stage1_condition(cond, name)
    else:
        config["condition"], sos = _parameterless_condition(src, project, cond_target, cond_params, condition)
        if sos is not None:
            config["sos_token"] = sos

    gpt_sd = _sub(sd, "transformer.")
    for key in [k for k in gpt_sd if re.fullmatch(r"blocks\.\d+\.attn\.mask", k)]:
        report.dropped.append("transformer." + key)
        del gpt_sd[key]
    transformer_params = _section(params.get("transformer_config"))[1]
    heads = n_head or _option(transformer_params, "n_head", f"{where} transformer_config", int)
    if heads is None:
        raise CheckpointError(
            f"{src}: the number of attention heads cannot be read from the weights; pass --config with the "
            "project.yaml published next to the checkpoint (transformer_config.params.n_head)")
    gpt_where = f"{src} (transformer.*)"
    vocab_size, n_embd = _shape(gpt_sd, "tok_emb.weight", gpt_where)
    gpt_config = {"vocab_size": vocab_size, "block_size": _shape(gpt_sd, "pos_emb", gpt_where)[1],
                  "n_layer": len(_indices(gpt_sd, "blocks.")), "n_head": heads, "n_embd": n_embd}
    if heads < 1 or n_embd % heads:
        raise CheckpointError(f"{where}: n_head = {heads} does not divide the transformer width {n_embd}")
    with torch.device("meta"):
        gpt = GPT(GPTConfig(**gpt_config))
    _check_layout(gpt, gpt_sd, f"{gpt_where} (a taming-transformers minGPT)")
    tensors.update({f"transformer.{k}": v for k, v in gpt_sd.items()})
    config["transformer"] = {**gpt_config, "window": 16}
    return tensors, config


def _parameterless_condition(src: Path, project: _Project | None, target: str | None, params: dict[str, Any],
                             condition: str | None) -> tuple[dict[str, Any], int | None]:
    """The condition of a checkpoint whose condition stage has no weights: from the config only."""
    if project is None:
        raise CheckpointError(
            f"{src}: the condition stage has no weights (unconditional, class label or coordinates), so "
            "its kind and settings are only in the model's config; pass --config project.yaml")
    where = f"{project.where} cond_stage_config"
    sos = None
    if project.params.get("unconditional") is True or target in _UNCONDITIONAL:
        found: dict[str, Any] = {"name": "", "options": {}}
        sos = _option(project.params, "sos_token", project.where, int, 0)
    elif target and target.endswith(".Labelator"):
        found = {"name": "class", "options": {"n_classes": _required(params, "n_classes", where)}}
    elif target and target.endswith(".CoordStage"):
        found = {"name": "coordinates", "options": {"n_codes": _required(params, "n_embed", where),
                                                    "down_factor": _required(params, "down_factor", where)}}
    else:
        raise CheckpointError(
            f"{where}: condition stage {target!r} is not supported (supported: VQModel, "
            "VQSegmentationModel, SOSProvider / unconditional, Labelator, CoordStage)")
    if condition is not None and condition != found["name"]:
        raise CheckpointError(f"--condition {condition!r} does not match the checkpoint's condition stage "
                              f"{target} (condition {found['name']!r})")
    return found, sos


def _required(params: dict[str, Any], key: str, where: str) -> int:
    value = _option(params, key, where, int)
    if value is None:
        raise RecipeError(f"{where}: params.{key} is missing")
    return value
