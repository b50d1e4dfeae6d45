"""Full-model ``.h5`` files saved by tf.keras 2, made loadable by Keras 3 without running any code.

tf.keras 2 spells a few configs in ways Keras 3 rejects; we rewrite only those spellings (same meaning)
in a cached copy and load that in safe mode as usual. The weights are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pipeline import storage

KERAS2_RESPELLING = 1  # bump when _respell_keras2_config changes, so cached copies are redone


def keras2_h5_compatible(local: str) -> str:
    """An .h5 saved by tf.keras 2 with its config spelled the Keras 3 way (a cached copy), else ``local`` itself.

    tf.keras 2 writes configs Keras 3 rejects: BatchNormalization ``axis`` as a one-item list and
    DepthwiseConv2D ``groups``. Only those spellings change (same meaning); weights are untouched.
    """
    import h5py

    with h5py.File(local, "r") as f:
        version = f.attrs.get("keras_version", b"")
        config = f.attrs["model_config"]
    version = version.decode() if isinstance(version, bytes) else str(version)
    if not version.startswith("2."):
        return local
    text = config.decode() if isinstance(config, bytes) else str(config)
    fixed = json.loads(text)
    if not _respell_keras2_config(fixed):
        return local
    stat = os.stat(local)
    key = hashlib.sha256(json.dumps([KERAS2_RESPELLING, os.path.abspath(local), stat.st_mtime_ns, stat.st_size]).encode()).hexdigest()[:20]
    target = os.path.join(storage.cache_dir("keras2_h5"), f"{key}.h5")
    if not os.path.exists(target):
        tmp = f"{target}.{os.getpid()}.part"
        with open(local, "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read())
        with h5py.File(tmp, "r+") as f:
            f.attrs["model_config"] = json.dumps(fixed)
        os.replace(tmp, target)
    return target


def _respell_keras2_config(node: Any) -> bool:
    """Rewrite tf.keras 2 configs in place to what Keras 3 accepts; True when anything changed.

    Layer spellings: BatchNormalization ``axis`` [3] -> 3, DepthwiseConv2D ``groups=1`` dropped. Graph
    spellings of a functional model: a single input/output written as a one-item list is unwrapped, and
    calls of a nested model count from 0 (tf.keras 2 counted the nested model's own creation as node 0).
    """
    changed = False
    if isinstance(node, dict):
        config = node.get("config")
        if isinstance(config, dict):
            name = node.get("class_name")
            axis = config.get("axis")
            if name == "BatchNormalization" and isinstance(axis, list) and len(axis) == 1:
                config["axis"], changed = axis[0], True
            if name == "DepthwiseConv2D" and config.get("groups") == 1:
                del config["groups"]
                changed = True
            if isinstance(config.get("layers"), list) and "output_layers" in config:
                changed = _respell_keras2_graph(config) or changed
        for value in node.values():
            changed = _respell_keras2_config(value) or changed
    elif isinstance(node, list):
        for value in node:
            changed = _respell_keras2_config(value) or changed
    return changed


def _respell_keras2_graph(config: dict) -> bool:
    changed = False
    for key in ("input_layers", "output_layers"):
        value = config.get(key)
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            config[key], changed = value[0], True
    nested = {layer.get("config", {}).get("name") for layer in config["layers"]
              if layer.get("class_name") in ("Functional", "Model", "Sequential")}
    for layer in config["layers"]:
        for call in layer.get("inbound_nodes") or []:
            for reference in call if isinstance(call, list) else []:
                if isinstance(reference, list) and len(reference) >= 3 and reference[0] in nested \
                        and isinstance(reference[1], int) and reference[1] >= 1:
                    reference[1] -= 1
                    changed = True
    return changed
