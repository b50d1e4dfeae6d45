"""The settings TensorFlow reads once, when it loads, for every process of ours: set before ``import tensorflow``.

The ``pipeline`` command applies the defaults when it starts (so does the local Ray it starts, which inherits
them), and every predictor actor and fine-tuning worker applies them before it imports TensorFlow, on any
cluster. A user's own process (a notebook calling ``pipeline.Classifier``) is left as it is. A value already
in the environment (the user's shell, a job's runtime env, a pod spec) wins: they are defaults, never forced.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

TENSORFLOW_DEFAULTS = {
    # TensorFlow's C++ start-up chatter would bury the job's own lines.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Host tensors from TensorFlow's BFC allocator, which keeps the memory it freed for the next batch.
    # The default allocator hands every large activation back to the OS and page-faults it in again on
    # the next batch: 5,000 minor page faults an image for MobileNetV2 at batch 32, and 38% of a CPU
    # forward pass spent in the kernel (40 -> 22 core-ms an image; EfficientNet-Lite0 37 -> 30, ResNet50
    # 157 -> 130), for about 100 MiB more peak memory. benchmarks/label_feed.py measures both.
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
}


def apply_tensorflow_defaults() -> None:
    """Put TENSORFLOW_DEFAULTS into this process's environment where nothing set them.

    Why the environment and never ``ray.init(runtime_env=...)``: inside a submitted Ray job, Ray refuses to
    merge a ``ray.init`` runtime env with the job's own when both set the same variable (every KubeRay RayJob
    that sets TF_CPP_MIN_LOG_LEVEL did). A local Ray's workers inherit this process's environment, and a
    cluster's workers apply the defaults themselves when they import ``pipeline``.
    """
    for name, value in TENSORFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)


def use_cpu_threads(threads: int) -> None:
    """Size TensorFlow's and OpenMP's thread pools before TensorFlow loads in this worker (``tf.config`` alone
    leaves the pools that TensorFlow creates at import, e.g. oneDNN's OpenMP threads, at every core)."""
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ[name] = str(threads)


# Modules Keras imports at load when they are installed, for features no worker of ours uses: scikit-learn
# for keras.wrappers' SKLearnClassifier and matplotlib.pyplot for keras.visualization's plots. Both imports
# sit under ``try/except ImportError`` in Keras. Measured on 2 cores: `import tensorflow, keras` costs 6.2-7.7 s
# of CPU with them and 4.8-5.4 s without, in every predictor actor and fine-tuning worker, while the job's
# other processes start on the same cores.
KERAS_EXTRAS_WORKERS_SKIP = ("sklearn", "matplotlib.pyplot")


def import_tensorflow_for_worker() -> ModuleType:
    """``import tensorflow`` (which loads Keras) in a Ray worker of ours, without KERAS_EXTRAS_WORKERS_SKIP.

    For the import only, those modules are marked absent, so Keras leaves the two features out in this
    process. After it they import normally, so a user's custom layer may still use scikit-learn or pyplot.
    Never call this for ``pipeline.classify``: that runs in the user's own process, where keras.wrappers
    may be in use. Once Keras is loaded, this is a plain import.
    """
    apply_tensorflow_defaults()  # a worker of ours, on any node: before TensorFlow reads them
    hidden = [] if "keras" in sys.modules else [name for name in KERAS_EXTRAS_WORKERS_SKIP if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        import keras  # noqa: F401
        import tensorflow as tf
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
    return tf
