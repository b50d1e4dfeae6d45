"""Whole-object S3 GETs through obstore (Rust's object_store): the millions of image reads of a run.

s3fs pays botocore's per-request work (signing, user-agent strings, dateutil parsing the headers) on the
same cores that decode and run the model: 2.5-3 core-ms a GET against moto on loopback, 4.8-5.7 inside
a busy Ray worker, plus 1.2 core-s per process to import s3fs and set up its session; obstore does the
same GET in 0.7-0.8 core-ms and imports in milliseconds (``benchmarks/s3_get_cost.py``).

It is used only for reads, and only where it resolves what s3fs would resolve: the same endpoint,
credentials and region. Options it does not translate, a bucket whose region is unknown, or a bucket that
answers "wrong region" go to s3fs (``storage.read_bytes`` falls back when ``read`` returns None), and so
does every listing and write. ``PIPELINE_S3_READER=s3fs`` turns it off.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

READER_ENV = "PIPELINE_S3_READER"  # "s3fs" sends every read through s3fs
# s3fs options with an exact obstore equivalent; any other key sends that URL's reads to s3fs.
TRANSLATED = {"key", "secret", "token", "anon", "endpoint_url", "client_kwargs", "config_kwargs"}
CLIENT_KWARGS = {"endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
CONFIG_KWARGS = {"retries", "connect_timeout", "read_timeout"}
DEFAULT_RETRIES = 4  # re-sends after 5xx, resets and timeouts, like botocore's 5 attempts; fetch.py retries on top
# A bucket in another region than the one the requests are signed for answers one of these.
WRONG_REGION = ("incorrectly configured region", "301 Moved Permanently", "PermanentRedirect",
                "AuthorizationHeaderMalformed")
MESSAGE_LIMIT = 300  # obstore's errors carry the whole response body and a debug dump

_stores: dict[str, Any] = {}  # bucket + options -> S3Store, or None: s3fs reads that bucket
_lock = threading.Lock()


def read(url: str, options: dict[str, Any]) -> bytes | None:
    """The bytes of the object at ``url`` (s3://bucket/key), or None when s3fs should read it.

    Raises FileNotFoundError for a missing object, PermissionError for a refused one, and OSError for
    anything that may pass (the caller retries those), each with a message short enough for an error row.
    """
    if os.environ.get(READER_ENV, "").lower() == "s3fs":
        return None
    bucket, _, key = url[len("s3://"):].partition("/")
    if any(part in ("", ".", "..") for part in key.split("/")):
        return None  # a key obstore's paths cannot name ("a//b", "a/../b", "dir/"): S3 allows them
    cache_key = json.dumps([bucket, options], sort_keys=True, default=str)
    with _lock:
        if cache_key not in _stores:
            _stores[cache_key] = _make_store(bucket, options)
        store = _stores[cache_key]
    if store is None:
        return None
    import obstore
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    try:
        return bytes(obstore.get(store, key).bytes())
    except (FileNotFoundError, NotFoundError) as err:
        raise FileNotFoundError(f"{url}: {_short(err)}") from None
    except (PermissionDeniedError, UnauthenticatedError) as err:
        raise PermissionError(f"{url}: {_short(err)}") from None
    except ValueError:
        return None  # a key obstore will not parse; s3fs sends it as it is
    except Exception as err:  # noqa: BLE001 - obstore raises GenericError for 5xx, resets, timeouts
        if any(sign in str(err) for sign in WRONG_REGION):
            with _lock:
                _stores[cache_key] = None  # s3fs follows the redirect to the bucket's region
            return None
        raise OSError(f"{url}: {type(err).__name__}: {_short(err)}") from None


def _short(err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    first = first.split(": <?xml")[0]  # the status line says it; the response body follows
    return first if len(first) <= MESSAGE_LIMIT else first[:MESSAGE_LIMIT] + "..."


def _make_store(bucket: str, options: dict[str, Any]) -> Any:
    """An S3Store resolving what s3fs would for these options, or None where it cannot be sure to."""
    client = options.get("client_kwargs") or {}
    config = options.get("config_kwargs") or {}
    if set(options) - TRANSLATED or set(client) - CLIENT_KWARGS or set(config) - CONFIG_KWARGS:
        return None
    try:
        import obstore  # noqa: F401
        from obstore.store import S3Store
    except ImportError:
        return None
    endpoint = (options.get("endpoint_url") or client.get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    settings: dict[str, Any] = {}
    credentials = _credentials(options, client)
    if credentials is False:
        return None
    if isinstance(credentials, dict):
        settings.update(credentials)
    region = client.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None and callable(credentials):
        region = _botocore_session().get_config_variable("region")
    if region is None:
        if endpoint is None:
            return None  # a bucket on AWS in an unknown region: s3fs asks S3 where it is
        region = "us-east-1"  # what botocore signs for at a custom endpoint (MinIO, R2, moto)
    settings["region"] = region
    if endpoint:
        settings["endpoint"] = endpoint
    client_options: dict[str, Any] = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
    if "connect_timeout" in config:
        client_options["connect_timeout"] = timedelta(seconds=float(config["connect_timeout"]))
    if "read_timeout" in config:
        client_options["timeout"] = timedelta(seconds=float(config["read_timeout"]))
    retries = _retries(config.get("retries") or {})
    retry_config = {"max_retries": retries, "retry_timeout": timedelta(seconds=30),
                    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5),
                                "base": 2}}
    try:
        return S3Store(bucket, config=settings, client_options=client_options, retry_config=retry_config,
                       credential_provider=credentials if callable(credentials) else None)
    except Exception:  # noqa: BLE001 - a setting obstore rejects: s3fs reports it in its own words
        return None


def _retries(botocore_retries: dict[str, Any]) -> int:
    """botocore's ``max_attempts`` counts the re-sends (it stores them as ``total_max_attempts``, one more)."""
    if "total_max_attempts" in botocore_retries:
        return max(0, int(botocore_retries["total_max_attempts"]) - 1)
    if "max_attempts" in botocore_retries:
        return max(0, int(botocore_retries["max_attempts"]))
    return DEFAULT_RETRIES


def _credentials(options: dict[str, Any], client: dict[str, Any]) -> dict[str, Any] | Callable[[], dict] | bool:
    """obstore settings for the credentials s3fs would use: a dict, a provider, or False (let s3fs decide).

    Explicit options and the AWS_* key variables are passed as they are; anything else (``~/.aws`` files,
    AWS_PROFILE, instance or pod roles) goes through botocore's own credential chain, refreshed as it expires.
    """
    if options.get("anon"):
        return {"skip_signature": True}
    key = options.get("key") or client.get("aws_access_key_id")
    secret = options.get("secret") or client.get("aws_secret_access_key")
    token = options.get("token") or client.get("aws_session_token")
    if key and secret:
        return {"access_key_id": key, "secret_access_key": secret, **({"token": token} if token else {})}
    if key or secret:
        return False
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        token = os.environ.get("AWS_SESSION_TOKEN")
        return {"access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
                "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"], **({"token": token} if token else {})}
    try:
        found = _botocore_session().get_credentials()
    except Exception:  # noqa: BLE001 - a broken ~/.aws file: s3fs reports it
        return False
    if found is None:
        return False  # no credentials anywhere: s3fs says so (or reads anonymously where it may)
    refreshing = hasattr(found, "refresh_needed")

    def provide() -> dict[str, Any]:
        frozen = found.get_frozen_credentials()
        expires = datetime.now(timezone.utc) + timedelta(minutes=5) if refreshing else None
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token, "expires_at": expires}

    return provide


_session: Any = None


def _botocore_session() -> Any:
    global _session
    if _session is None:
        import botocore.session

        _session = botocore.session.get_session()
    return _session
