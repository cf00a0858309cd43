"""Write network pickles in the format of NVlabs stylegan2-ada-pytorch, for the loader tests.

The official pickles store each network module as `_reconstruct_persistent_obj(meta)`, where meta holds the
module's source text, class name and __dict__ (see torch_utils/persistence.py of that project). These
helpers produce the same byte-level structure from this project's Generator, whose module tree and
attribute names mirror the official ones, with stand-in `torch_utils` and `dnnlib` modules that exist only
while a file is written.
"""

import contextlib
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
from torch import nn

PERSISTENCE_VERSION = 6
DEFAULT_MODULE_SRC = "# Stand-in for the source of training/networks.py, which the loader never executes.\n"
_GAIN_ATTRIBUTES = ("weight_gain", "bias_gain", "act_gain")


class EasyDict(dict):
    """Written as dnnlib.util.EasyDict, like the official configuration dicts."""


def _reconstruct_persistent_obj(meta):  # pragma: no cover - only referenced by name inside pickles
    raise AssertionError("the loader must never call the pickled reconstruct function")


class TFNetwork:
    """Written as dnnlib.tflib.network.Network, the class of TensorFlow-era NVlabs pickles."""

    def __init__(self, state):
        self._state = state

    def __getstate__(self):
        return self._state


@contextlib.contextmanager
def _official_module_names():
    """Register stand-in modules so pickle can name the classes and functions above as the official ones."""
    names = {
        "torch_utils": {},
        "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
        "dnnlib": {"EasyDict": EasyDict},
        "dnnlib.util": {"EasyDict": EasyDict},
        "dnnlib.tflib": {},
        "dnnlib.tflib.network": {"Network": TFNetwork},
    }
    saved = {}
    for name, attributes in names.items():
        saved[name] = sys.modules.get(name)
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    TFNetwork.__module__, TFNetwork.__qualname__ = "dnnlib.tflib.network", "Network"
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _easy(value):
    if isinstance(value, dict):
        return EasyDict({key: _easy(item) for key, item in value.items()})
    return value


class _PersistencePickler(pickle.Pickler):
    def __init__(self, file, protocol, module_src, init_kwargs):
        super().__init__(file, protocol=protocol)
        self.module_src = module_src
        self.init_kwargs = init_kwargs

    def reducer_override(self, obj):
        if not isinstance(obj, nn.Module):
            return NotImplemented
        state = dict(obj.__dict__)
        for name in _GAIN_ATTRIBUTES:
            if isinstance(state.get(name), float):
                state[name] = np.float64(state[name])  # the official code computes gains with np.sqrt
        state.pop("metadata", None)
        state.pop("init_kwargs", None)
        is_generator = type(obj).__name__ == "Generator"
        state["_init_args"] = ()
        state["_init_kwargs"] = _easy(self.init_kwargs) if is_generator else EasyDict()
        meta = dict(
            type="class",
            version=PERSISTENCE_VERSION,
            module_src=self.module_src,
            class_name=type(obj).__name__,
            state=state,
        )
        return _reconstruct_persistent_obj, (meta,)


def write_network_pickle(path, G, module_src=DEFAULT_MODULE_SRC, init_kwargs=None, protocol=4, extra=None):
    """Write `G` as G_ema of an official-format network pickle {training_set_kwargs, G, D, G_ema, augment_pipe}.

    init_kwargs: what to record as G_ema's _init_kwargs (defaults to G.init_kwargs).
    extra: additional top-level entries, e.g. an object that must be refused.
    """
    init_kwargs = dict(G.init_kwargs if init_kwargs is None else init_kwargs)
    data = dict(training_set_kwargs=None, G=G, D=None, G_ema=G, augment_pipe=None)
    data.update(extra or {})
    with _official_module_names(), open(path, "wb") as file:
        _PersistencePickler(file, protocol, module_src, init_kwargs).dump(data)
    return path


def write_tf_pickle(path, protocol=3):
    """Write a small pickle shaped like the TensorFlow-era (G, D, Gs) tuple of dnnlib.tflib Networks."""
    def network(name):
        return TFNetwork(
            dict(
                version=4,
                name=name,
                static_kwargs=dict(resolution=32, latent_size=64),
                components={},
                build_module_src="def G_main(): pass\n",
                build_func_name="G_main",
                variables=[("mapping/Dense0/weight", np.zeros([64, 64], np.float32))],
            )
        )

    with _official_module_names(), open(path, "wb") as file:
        pickle.dump((network("G"), network("D"), network("Gs")), file, protocol=protocol)
    return path
