"""Distributed batch image labeling and fine-tuning with Keras 3 on Ray.

``pipeline.classify`` labels a few images in this process; the ``pipeline``
command runs the Ray jobs (label, finetune, submit) and queries their output.
"""

import os

# TensorFlow's C++ start-up chatter hides our own messages; users can still override this.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.classification import Prediction, classify  # noqa: E402

__all__ = ["Prediction", "classify"]
