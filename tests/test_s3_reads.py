"""Image reads from S3 go through obstore where it resolves what s3fs would, and through s3fs everywhere
else: the same bytes, the same credentials, the same errors. Real S3 (moto) behind the fault proxy, which
records who sent each request (User-Agent) and with which access key."""

from __future__ import annotations

import pytest

from conftest import BUCKET
from pipeline import s3_reads, storage
from pipeline.fetch import fetch_and_decode


def botocore_sent(user_agent: str) -> bool:
    return user_agent.startswith(("aiobotocore", "Botocore", "botocore", "Boto3"))


@pytest.fixture
def photo_on_s3(s3_behind_proxy, photos, monkeypatch):
    direct, proxy, options = s3_behind_proxy
    direct.put_file(str(photos["coffee"]), f"{BUCKET}/reads/coffee.png")
    monkeypatch.setattr(s3_reads, "_stores", {})
    monkeypatch.setattr(s3_reads, "_session", None)
    proxy.seen.clear()
    yield f"s3://{BUCKET}/reads/coffee.png", photos["coffee"].read_bytes(), proxy, options
    proxy.heal()


def image_gets(proxy) -> list[tuple[str, str, str, str]]:
    return [seen for seen in proxy.seen if seen[0] == "GET" and "/reads/" in seen[1]]


def test_image_reads_go_through_obstore_with_the_same_bytes_and_key(photo_on_s3):
    url, data, proxy, options = photo_on_s3
    storage.set_storage_options(options)
    assert storage.read_bytes(url) == data
    assert storage.read_bytes(url) == data
    gets = image_gets(proxy)
    assert len(gets) == 2, gets  # one GET an image, no HEAD
    assert not any(botocore_sent(agent) for _, _, agent, _ in gets), gets
    assert {key for *_, key in gets} == {"testing"}  # signed with the environment's key, as s3fs would


@pytest.mark.parametrize("how", ["an option obstore does not translate", "PIPELINE_S3_READER=s3fs"])
def test_reads_stay_on_s3fs_where_obstore_could_differ(photo_on_s3, monkeypatch, how):
    url, data, proxy, options = photo_on_s3
    if how.startswith("PIPELINE"):
        monkeypatch.setenv(s3_reads.READER_ENV, "s3fs")
    else:
        options = {**options, "requester_pays": False}
    storage.set_storage_options(options)
    assert storage.read_bytes(url) == data
    gets = image_gets(proxy)
    assert len(gets) == 1 and botocore_sent(gets[0][2]), gets


def test_a_bucket_in_another_region_is_left_to_s3fs(photo_on_s3):
    """S3 answers 301 PermanentRedirect to a request signed for the wrong region; s3fs follows it."""
    url, data, proxy, options = photo_on_s3
    storage.set_storage_options(options)
    proxy.wrong_region_next(1)
    assert storage.read_bytes(url) == data
    assert storage.read_bytes(url) == data
    agents = [agent for _, _, agent, _ in image_gets(proxy)]
    assert len(agents) == 3 and not botocore_sent(agents[0]), agents  # obstore's GET got the 301
    assert botocore_sent(agents[1]) and botocore_sent(agents[2]), agents  # and the bucket stays on s3fs


def test_credentials_from_an_aws_credentials_file_sign_obstore_requests(photo_on_s3, tmp_path, monkeypatch):
    url, data, proxy, options = photo_on_s3
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = FROMTHEFILE\n"
                                          "aws_secret_access_key = secret-from-the-file\n")
    (tmp_path / "config").write_text("")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    storage.set_storage_options(options)
    assert storage.read_bytes(url) == data
    gets = image_gets(proxy)
    assert len(gets) == 1 and not botocore_sent(gets[0][2]) and gets[0][3] == "FROMTHEFILE", gets


def test_explicit_keys_in_storage_options_win_over_the_environment(photo_on_s3):
    url, data, proxy, options = photo_on_s3
    storage.set_storage_options({**options, "key": "FROMOPTIONS", "secret": "s"})
    assert storage.read_bytes(url) == data
    gets = image_gets(proxy)
    assert len(gets) == 1 and not botocore_sent(gets[0][2]) and gets[0][3] == "FROMOPTIONS", gets


def test_a_bucket_on_aws_in_an_unknown_region_is_left_to_s3fs(tmp_path, monkeypatch):
    """s3fs asks S3 where such a bucket is; obstore would sign for us-east-1 and fail elsewhere."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert s3_reads._make_store("some-bucket", {}) is None
    assert s3_reads._make_store("some-bucket", {"client_kwargs": {"region_name": "eu-west-1"}}) is not None
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert s3_reads._make_store("some-bucket", {}) is not None


def test_missing_and_refused_reads_keep_their_meaning_and_short_messages(photo_on_s3):
    url, data, proxy, options = photo_on_s3
    missing = f"s3://{BUCKET}/reads/missing.png"
    storage.set_storage_options(options)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(missing)
    proxy.outage(600, only="/reads/")
    fetched = fetch_and_decode([url, missing], 32, retries=0)
    assert fetched.transient.all()  # a 503 says nothing about either object
    assert all(error.startswith("unreadable after retries: OSError") and url.rsplit("/")[-1] in error
               or "missing" in error for error in fetched.errors), fetched.errors
    assert all(len(error) < 500 for error in fetched.errors), fetched.errors  # not obstore's debug dump
    assert any("503" in error for error in fetched.errors), fetched.errors


def test_keys_obstore_cannot_name_are_read_through_s3fs(s3_behind_proxy, photo_on_s3):
    """S3 keys are any string: "a//b" is an object of its own, not "a/b"."""
    direct, *_ = s3_behind_proxy
    url, data, proxy, options = photo_on_s3
    storage.set_storage_options(options)
    odd = ["two//slashes.png", "a b+c%41(ü).png"]
    for i, key in enumerate(odd):
        direct.pipe_file(f"{BUCKET}/reads/{key}", data + bytes([i]))
    for i, key in enumerate(odd):
        assert storage.read_bytes(f"s3://{BUCKET}/reads/{key}") == data + bytes([i]), key
    agents = [agent for _, _, agent, _ in image_gets(proxy)]
    assert sum(not botocore_sent(agent) for agent in agents) == 1, agents  # only the last one is obstore's
    # "." and ".." segments too (the loopback proxy would normalize them away, so no request is sent here)
    for key in ("dot/./segment.png", "dots/../segment.png"):
        assert s3_reads.read(f"s3://{BUCKET}/reads/{key}", options) is None
