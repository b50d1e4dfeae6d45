"""Real sample photos that install offline: scikit-image's data folder (chelsea the cat, coffee, rocket, ...).

``python -m pipeline.samples`` prints the folder, so a demo can label it.
"""

from __future__ import annotations

import os

from pipeline.errors import UserError


def sample_photos_dir() -> str:
    try:
        import skimage
    except ImportError as err:
        raise UserError("the sample photos come with scikit-image: pip install scikit-image") from err
    return os.path.join(os.path.dirname(skimage.__file__), "data")


if __name__ == "__main__":
    print(sample_photos_dir())
