"""Shared fixtures: real photos from scikit-image, a private weights cache, a real local Ray."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Keep converted weights and downloads out of the user's ~/.cache during tests."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["PIPELINE_CACHE_DIR"] = str(path)
    yield path


@pytest.fixture(autouse=True)
def no_storage_options_left_behind():
    """A test that passed --storage-options in this process must not hand its (by then dead) endpoint to the
    next one: ``set_storage_options`` also exports them for Ray workers, and a ``ray start`` inherits them."""
    yield
    from pipeline import storage

    storage.set_storage_options(None)


@pytest.fixture(scope="session")
def skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="session")
def photos(skimage_data) -> dict[str, Path]:
    """Real photos shipped by scikit-image, by short name."""
    return {
        "chelsea": skimage_data / "chelsea.png",
        "coffee": skimage_data / "coffee.png",
        "rocket": skimage_data / "rocket.jpg",
        "astronaut": skimage_data / "astronaut.png",
    }


@pytest.fixture()
def photo_dir(tmp_path, photos) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, path in photos.items():
        shutil.copy(path, folder / f"{name}{path.suffix}")
    return folder


@pytest.fixture(scope="session")
def lite0():
    from pipeline.models.loading import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture()
def photo_copies(tmp_path, photos):
    """``make(n)``: a folder with n copies of each sample photo (4n images), long enough to interrupt."""
    def make(copies: int) -> Path:
        folder = tmp_path / "many"
        folder.mkdir()
        for i in range(copies):
            for name, path in photos.items():
                shutil.copy(path, folder / f"{i:02d}_{name}{path.suffix}")
        return folder
    return make
