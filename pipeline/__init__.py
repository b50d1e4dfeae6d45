"""Distributed batch image labeling and fine-tuning with Keras 3 on Ray.

``pipeline.classify`` labels a few images in this process; the ``pipeline``
command runs the Ray jobs (label, finetune, submit) and queries their output.
"""

from pipeline.tensorflow_env import apply_tensorflow_defaults

apply_tensorflow_defaults()  # before anything of ours imports TensorFlow: it reads them when it loads

from pipeline.lazy_names import lazy_getattr  # noqa: E402

# Imported on first use, so a command that needs neither (``pipeline models``, ``show``) starts at once.
__getattr__ = lazy_getattr(__name__, {"Prediction": "pipeline.classification", "classify": "pipeline.classification"})
__all__ = ["Prediction", "classify"]
