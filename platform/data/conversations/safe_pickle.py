"""Restricted unpickling for public ``.pkl`` caches: a pickle is code, so only numpy arrays, numpy dtypes and
scalars, and plain builtin containers / numbers / strings may be built. Anything else (functions, ``eval``,
arbitrary classes) raises ``pickle.UnpicklingError`` naming the file and the refused global."""
from __future__ import annotations

import pickle
from pathlib import Path

ALLOWED_BUILTINS = frozenset({
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex", "bool",
    "slice", "range",
})
ALLOWED_NUMPY = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str = "<stream>"):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if module == "builtins" and name in ALLOWED_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in {("collections", "OrderedDict"), ("_codecs", "encode")}:  # encode: protocol-2 bytes
            return super().find_class(module, name)
        if (module, name) in ALLOWED_NUMPY:
            import numpy as np

            if module.startswith("numpy._core") and not hasattr(np, "_core"):
                module = module.replace("numpy._core", "numpy.core")  # pickle from numpy 2 read by numpy 1
            elif module.startswith("numpy.core") and hasattr(np, "_core"):
                module = module.replace("numpy.core", "numpy._core")  # pickle from numpy 1 read by numpy 2
            return super().find_class(module, name)
        if module == "numpy" and name in {"float64", "float32", "int64", "int32", "int8", "uint8", "bool_",
                                          "str_", "float16", "int16"}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{self._path}: refused to load global {module}.{name} "
                                     f"(only numpy arrays/dtypes and builtin containers are allowed)")


def safe_load(path: Path):
    """Load a pickle file with ``RestrictedUnpickler``; errors name the file."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, str(path)).load()
        except pickle.UnpicklingError as e:
            if str(e).startswith(str(path)):  # a refused global, already named
                raise
            raise pickle.UnpicklingError(f"{path}: not a readable pickle ({e})") from e
        except Exception as e:  # truncated / corrupt stream
            raise pickle.UnpicklingError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
