"""Distributed batch image labeling and fine-tuning with Keras 3 on Ray.

In Python, with the CLI's options as keywords (``pipeline.api``):

- ``pipeline.label(source, output, top_k=3)``: the labeling job (``pipeline label``), on Ray.
- ``pipeline.finetune(data, output, epochs=5)``: the fine-tuning job (``pipeline finetune``), on Ray Train.
- ``pipeline.predict(dataset, model=...)``: the prediction columns added to a Ray Dataset you already have.
- ``pipeline.Classifier(model)`` / ``pipeline.classify(images)``: a few images in this process, no Ray.

Importing ``pipeline`` changes nothing in the importing process: TensorFlow's and OpenCV's process settings
are applied by our own processes (the ``pipeline`` command, Ray workers of our jobs), and a job's Ray Data
settings are put back when it ends.
"""

from pipeline.lazy_names import lazy_getattr

# Imported on first use, so a command that needs none of them (``pipeline models``, ``show``) starts at once.
# ``label`` and ``finetune`` are the subpackages, callable as their jobs (``pipeline.lazy_names.callable_package``).
__getattr__ = lazy_getattr(__name__, {
    "Classifier": "pipeline.classification", "Prediction": "pipeline.classification",
    "classify": "pipeline.classification", "predict": "pipeline.api",
    "label": "pipeline.label", "finetune": "pipeline.finetune",
})
__all__ = ["Classifier", "Prediction", "classify", "finetune", "label", "predict"]
