"""Distributed batch image labeling and fine-tuning with Keras 3 on Ray.

``pipeline.classify`` labels a few images in this process; the ``pipeline``
command runs the Ray jobs (label, finetune, submit) and queries their output.
"""

from pipeline.tensorflow_env import apply_tensorflow_defaults

apply_tensorflow_defaults()  # before anything of ours imports TensorFlow: it reads them when it loads

from pipeline.classification import Prediction, classify  # noqa: E402

__all__ = ["Prediction", "classify"]
