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


@pytest.fixture()
def no_download_env(tmp_path) -> dict[str, str]:
    """The environment of a process whose weight downloads fail on any machine, with internet or without:
    an empty Keras cache, and every HTTP(S) request sent to a closed port on loopback as its proxy."""
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "empty_keras_home"), "NO_PROXY": "", "no_proxy": ""}
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env[name] = closed
    return env


@pytest.fixture(autouse=True)
def no_storage_options_left_behind():
    """A test that passed --storage-options in this process must not hand its (by then dead) endpoint to the
    next one: ``set_storage_options`` also exports them for Ray workers, and a ``ray start`` inherits them."""
    yield
    from pipeline import storage

    storage.set_storage_options(None)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for a module's in-process jobs (each job reuses it instead of starting its own), as a
    notebook has; started as a job starts its own (never attached to, nor answered for by, a cluster
    another test runs)."""
    import ray

    from pipeline.ray_session import start_local_ray

    start_local_ray(num_cpus=2, logging_level="WARNING")
    yield
    ray.shutdown()


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


BUCKET = "feed-bucket"  # the bucket of ``s3_behind_proxy``


@pytest.fixture(scope="module")
def s3_behind_proxy():
    """moto on loopback, a fault proxy in front of it, and fsspec options that go through the proxy."""
    import s3fs
    from s3_proxy import fault_proxy, moto_s3

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    with moto_s3() as endpoint, fault_proxy(endpoint) as proxy:
        direct = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        if not direct.exists(BUCKET):  # moto keeps its buckets per process, across servers
            direct.mkdir(BUCKET)
        # Few client-side retries, so an outage outlasts them quickly (real runs keep the defaults).
        options = {"client_kwargs": {"endpoint_url": proxy.url},
                   "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
        yield direct, proxy, options
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
