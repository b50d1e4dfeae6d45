"""Writes the tf.keras 2 model files that tests/test_user_model.py loads with Keras 3 (run once, by hand).

The test environment has Keras 3 only, so these small files were made with the real tf.keras 2:

    pip install --target /tmp/tfk --no-deps tf-keras==2.21.0
    PYTHONPATH=/tmp/tfk TF_USE_LEGACY_KERAS=1 python tests/data/make_tf_keras2_models.py

They hold the tf.keras 2 spellings Keras 3 rejects (BatchNormalization axis as a list, DepthwiseConv2D
groups, a nested model's one-item output list and node numbering), in the tutorials' two shapes:
``Sequential([base, Flatten, Dense, Dropout, Dense(1, sigmoid)])`` and ``base(inputs)`` in a functional
model with a softmax. ``tf_keras2_expected.json`` records what tf.keras 2 predicted on a fixed input.
"""

import json
import os

import numpy as np
import tensorflow as tf

keras = tf.keras
assert keras.__name__.startswith("tf_keras"), "run with TF_USE_LEGACY_KERAS=1 and tf-keras installed"
HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 16


def fixed_input() -> np.ndarray:
    """The same pixels in the test: a deterministic pattern in [0, 255], already divided by 255 there."""
    return (np.arange(2 * SIZE * SIZE * 3).reshape(2, SIZE, SIZE, 3) * 37 % 251).astype("float32")


def base() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.ReLU(6.0)(x), name="small_base")


def main() -> None:
    tf.random.set_seed(0)
    expected = {}
    sequential = keras.Sequential([base(), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
                                   keras.layers.Dropout(0.5), keras.layers.Dense(1, activation="sigmoid")])
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(base()(inputs, training=False))
    functional = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(features))
    for name, model in (("tf_keras2_sequential.h5", sequential), ("tf_keras2_functional.h5", functional)):
        model.save(os.path.join(HERE, name))
        expected[name] = model.predict(fixed_input() / 255.0, verbose=0).tolist()
    with open(os.path.join(HERE, "tf_keras2_expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
