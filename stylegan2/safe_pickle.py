"""Read NVlabs network pickles without running any code from them.

The official stylegan2-ada-pytorch pickles store every network as a "persistent" object: the complete
Python source of its module plus the object's state. Unpickling them with `pickle.load` executes that
source, so a crafted file runs arbitrary code. The unpickler here resolves only an explicit allow-list of
globals (containers, numpy scalars, torch's tensor rebuilders) and turns each persistent object into an
inert `PersistentRecord` whose source is kept as a string and never executed. Any other global stops the
load with a CheckpointError naming it.
"""

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import CheckpointError

# The persistence format version that every NVlabs release (stylegan2-ada-pytorch, stylegan3) writes.
PERSISTENCE_VERSION = 6


@dataclass
class PersistentRecord:
    """An object pickled by NVlabs' torch_utils.persistence, kept as data: nothing of it was executed."""

    class_name: str  # e.g. "Generator", "SynthesisLayer"
    state: dict  # the object's __dict__: _parameters, _buffers, _modules, plain attributes, _init_kwargs
    module_src: str = field(repr=False)  # source text embedded in the pickle; never executed


class AttrDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict (the attribute access is not needed here)."""


class TFNetworkStub(dict):
    """Stand-in for dnnlib.tflib.network.Network of the TensorFlow-era pickles; keeps its pickled state."""

    def __setstate__(self, state):
        self.update(state)


def _record_from_meta(meta):
    """Replace torch_utils.persistence._reconstruct_persistent_obj: validate `meta` and keep it as data."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise CheckpointError(f"unexpected persistent-object metadata of type {type(meta).__name__}")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise CheckpointError(
            f"persistence format version {meta.get('version')!r} is not supported (expected {PERSISTENCE_VERSION})"
        )
    class_name, module_src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(module_src, str) or not isinstance(state, dict):
        raise CheckpointError("malformed persistent-object metadata: class_name, module_src or state missing")
    return PersistentRecord(class_name=class_name, state=state, module_src=module_src)


def _numpy_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise CheckpointError(f"rejected numpy dtype {dtype}: object arrays can hold arbitrary Python objects")
    return dtype


def _numpy_scalar(dtype, data=None):
    # numpy pickles a scalar as (dtype, raw bytes); rebuild it from the bytes alone.
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointError("malformed numpy scalar in the pickle")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_reconstruct(subtype, shape, dtype_code):
    # Used by TensorFlow-era pickles for numpy arrays; the array state follows through __setstate__.
    if subtype is not np.ndarray:
        raise CheckpointError("rejected a numpy array subclass in the pickle")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _latin1_encode(text, encoding="latin1"):
    # Protocol 2 writes bytes objects as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise CheckpointError(f"rejected _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    # Hooks and extra attributes are dropped: a loaded network needs neither, and they are not code-free.
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _load_storage(blob):
    """Rebuild a tensor storage from its nested legacy torch.save stream with torch's weights-only loader."""
    if not isinstance(blob, bytes):
        raise CheckpointError("malformed tensor storage in the pickle")
    try:
        return torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"rejected a tensor storage: {rejection_detail(error)}") from None


def rejection_detail(error: Exception) -> str:
    """Return the line of a torch weights-only error that names the rejected global."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(error).__name__])[0]


_ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record_from_meta,
    ("dnnlib.util", "EasyDict"): AttrDict,
    ("dnnlib", "EasyDict"): AttrDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "dtype"): _numpy_dtype,
    # numpy 1.x writers use numpy.core, numpy 2.x writers numpy._core.
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    # TensorFlow-era pickles (NVlabs stylegan2 and stylegan2-ada TF): recognised so they can be reported.
    ("dnnlib.tflib.network", "Network"): TFNetworkStub,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals an NVlabs network pickle needs."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"rejected: the pickle references the global '{module}.{name}', which a StyleGAN2 "
                f"network pickle never contains. Nothing from the file was run; do not open it with "
                f"pickle.load either, because that would run it"
            ) from None

    def persistent_load(self, pid):
        raise CheckpointError("rejected: the pickle uses persistent ids, which network pickles never do")


def restricted_load(file) -> object:
    """Unpickle `file` (a binary file object) with the allow-list; raise CheckpointError on anything else."""
    return RestrictedUnpickler(file).load()


def record_state_dict(record: PersistentRecord, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """Collect a record tree's parameters and persistent buffers under their state_dict names."""
    state = record.state
    tensors = OrderedDict()
    for name, value in state.get("_parameters", {}).items():
        if value is not None:
            tensors[prefix + name] = value.detach()
    skipped = state.get("_non_persistent_buffers_set", set())
    for name, value in state.get("_buffers", {}).items():
        if value is not None and name not in skipped:
            tensors[prefix + name] = value
    for name, child in state.get("_modules", {}).items():
        if isinstance(child, PersistentRecord):
            tensors.update(record_state_dict(child, prefix + name + "."))
        elif child is not None:
            raise CheckpointError(f"unexpected child module {prefix + name} of type {type(child).__name__}")
    return tensors


def iter_records(record: PersistentRecord, prefix: str = ""):
    """Yield (name, record) for `record` and every persistent sub-module below it."""
    yield prefix.rstrip("."), record
    for name, child in record.state.get("_modules", {}).items():
        if isinstance(child, PersistentRecord):
            yield from iter_records(child, prefix + name + ".")


def plain(value):
    """Turn AttrDicts, OrderedDicts and numpy scalars into plain dicts and Python numbers, recursively."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    return value
