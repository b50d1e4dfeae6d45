"""Read a legacy-format PyTorch state dict into numpy arrays, without torch.

A ``.pth`` file is a pickle, and unpickling runs code, so this reader uses a
restricted unpickler that knows the four globals a plain state dict needs and
refuses everything else. The legacy layout (PyTorch < 1.6) is five pickles in a
row -- magic number, protocol, sys info, the state dict, the storage keys --
followed by each storage's raw bytes, in key order, each behind an int64 count.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# PyTorch storage class name -> numpy dtype of its elements.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asked for a global outside the small set a state dict needs."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _TensorRef:
    """A tensor not yet materialised: its storage arrives after the pickles."""

    storage_key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that maps only the globals of a plain state dict."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"refusing to load global {module}.{name}: a weights file should only hold tensors"
        )

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        self.storage_types[key] = storage_type.name
        return key

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storage_types: dict[str, str] = {}


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only state-dict globals (raises UnsafePickleError)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def read_legacy_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """Return the state dict in ``path`` as name -> numpy array (strides honoured)."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path} is a zip-format PyTorch file; only the legacy format is supported")
        f.seek(0)
        unpickler = RestrictedUnpickler(f)
        if unpickler.load() != LEGACY_MAGIC:
            raise ValueError(f"{path} is not a legacy PyTorch file (bad magic number)")
        if unpickler.load() != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported PyTorch protocol version")
        unpickler.load()  # sys info: endianness and type sizes
        state = unpickler.load()
        keys = unpickler.load()
        storages: dict[str, np.ndarray] = {}
        for key in keys:
            dtype = np.dtype(STORAGE_DTYPES[unpickler.storage_types[key]]).newbyteorder("<")
            (numel,) = struct.unpack("<q", f.read(8))
            storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
    result: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for name, ref in state.items():
        result[name] = _materialise(ref, storages[ref.storage_key]) if isinstance(ref, _TensorRef) else ref
    return result


def _materialise(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :],
        shape=ref.size,
        strides=tuple(s * item for s in ref.stride),
        writeable=False,
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="))
