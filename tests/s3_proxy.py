"""A fault-injecting reverse proxy on 127.0.0.1 in front of an S3 endpoint (moto's server).

Real object stores are slow and sometimes refuse: every GET pays 10-50 ms, and
throttling or an outage answers ``503 SlowDown`` for longer than a client's own
retries last. This proxy reproduces that on loopback so tests and benchmarks walk
the path users take: ``latency`` seconds added to every request, ``outage(s)``
answering 503 SlowDown for ``s`` seconds, ``drop_next(n)`` closing the next ``n``
connections without an answer, ``wrong_region_next(n)`` answering 301 PermanentRedirect
(a request signed for another region). Requests are forwarded whole (headers included,
so SigV4 signatures and HEAD's Content-Length survive); ``seen`` records who sent each.

``serve_listing(bucket, keys)`` makes the proxy answer that bucket's ListObjectsV2 requests itself
from a sorted key list, at S3-like cost (moto spends ~0.4 s CPU on a 1000-key page), latency and
outages applied as to forwarded requests; everything else is still forwarded.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import ClientSession, ClientTimeout, web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
PERMANENT_REDIRECT = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PermanentRedirect</Code>'
                      b"<Message>The bucket you are attempting to access must be addressed using the specified "
                      b"endpoint.</Message></Error>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3FaultProxy:
    """Forward to ``upstream`` (an http://127.0.0.1:PORT endpoint), adding latency and faults on demand."""

    def __init__(self, upstream: str, latency: float = 0.0):
        if not upstream.startswith(("http://127.", "http://localhost")):
            raise ValueError(f"the proxy only forwards to loopback, not {upstream}")
        self.upstream = upstream.rstrip("/")
        self.latency = latency  # seconds added to every request
        self.requests = 0  # requests received
        self.refused = 0  # answered 503 SlowDown
        self.dropped = 0  # connections closed without an answer
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0  # the most at once since the last reset_max_in_flight()
        self._outage_until = 0.0
        self._outage_only = ""  # only requests whose path contains this are refused ("" = all)
        self._drop = 0
        self._wrong_region = 0
        self._listings: dict[str, tuple[list[str], int]] = {}  # bucket -> (sorted keys, object size)
        # (method, path, User-Agent, access key id) of every request, for tests that ask who sent what
        self.seen: list[tuple[str, str, str, str]] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="s3-fault-proxy")
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    # -- faults ---------------------------------------------------------------------------------
    def outage(self, seconds: float, only: str = "") -> None:
        """Answer requests with 503 SlowDown for the next ``seconds``: all, or those whose path contains ``only``."""
        self._outage_only = only
        self._outage_until = time.monotonic() + seconds

    def drop_next(self, count: int) -> None:
        """Close the next ``count`` connections without answering (a connection reset)."""
        with self._lock:
            self._drop = count

    def wrong_region_next(self, count: int) -> None:
        """Answer the next ``count`` GETs 301 PermanentRedirect, as S3 does when a request is signed for
        another region than the bucket's."""
        with self._lock:
            self._wrong_region = count

    def reset_max_in_flight(self) -> None:
        with self._lock:
            self.max_in_flight = self.in_flight

    # -- LIST index ---------------------------------------------------------------------------------
    def serve_listing(self, bucket: str, keys: Iterable[str], size: int = 1024) -> None:
        """Answer ``bucket``'s ListObjectsV2 (GET /bucket?list-type=2) from ``keys`` (each ``size`` bytes)
        instead of forwarding; the objects themselves need not exist upstream."""
        self._listings[bucket] = (sorted(set(keys)), size)

    def stop_listing(self, bucket: str) -> None:
        self._listings.pop(bucket, None)

    def _list_answer(self, request: web.Request) -> web.Response | None:
        bucket = request.path.strip("/")
        if request.method != "GET" or request.query.get("list-type") != "2" or bucket not in self._listings:
            return None
        keys, size = self._listings[bucket]
        q = request.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = min(int(q.get("max-keys", 1000)), 1000)
        token, after = q.get("continuation-token"), q.get("start-after", "")
        url = q.get("encoding-type") == "url"

        def enc(text: str) -> str:
            return escape(quote(text, safe="/") if url else text)

        if token:  # the key to resume at, as the last answer named it
            i = bisect.bisect_left(keys, base64.urlsafe_b64decode(token.encode()).decode())
        else:
            i = bisect.bisect_right(keys, after) if after else 0
        i = max(i, bisect.bisect_left(keys, prefix))
        contents, prefixes = [], []
        while i < len(keys) and len(contents) + len(prefixes) < max_keys and keys[i].startswith(prefix):
            key = keys[i]
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                contents.append(key)
                i += 1
            else:  # a common prefix: skip every key under it
                common = key[:cut + len(delimiter)]
                prefixes.append(common)
                i = bisect.bisect_left(keys, common[:-1] + chr(ord(common[-1]) + 1), i)
        truncated = i < len(keys) and keys[i].startswith(prefix)
        parts = ['<?xml version="1.0" encoding="UTF-8"?>\n'
                 '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                 f"<Name>{escape(bucket)}</Name><Prefix>{enc(prefix)}</Prefix>",
                 f"<Delimiter>{enc(delimiter)}</Delimiter>" if delimiter else "",
                 f"<StartAfter>{enc(after)}</StartAfter>" if after else "",
                 f"<ContinuationToken>{escape(token)}</ContinuationToken>" if token else "",
                 "<EncodingType>url</EncodingType>" if url else "",
                 f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
                 f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if truncated:
            parts.append(f"<NextContinuationToken>{base64.urlsafe_b64encode(keys[i].encode()).decode()}"
                         "</NextContinuationToken>")
        etag = "&quot;d41d8cd98f00b204e9800998ecf8427e&quot;"
        parts.extend(f"<Contents><Key>{enc(key)}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                     f"<ETag>{etag}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
                     for key in contents)
        parts.extend(f"<CommonPrefixes><Prefix>{enc(common)}</Prefix></CommonPrefixes>" for common in prefixes)
        parts.append("</ListBucketResult>")
        return web.Response(status=200, body="".join(parts).encode(), content_type="application/xml")

    def heal(self) -> None:
        self._outage_until, self._drop, self._wrong_region = 0.0, 0, 0

    # -- server ---------------------------------------------------------------------------------
    def start(self) -> "S3FaultProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        self._session = ClientSession(timeout=ClientTimeout(total=300), auto_decompress=False)
        app = web.Application(client_max_size=2**31)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        credential = request.headers.get("Authorization", "").partition("Credential=")[2].partition("/")[0]
        with self._lock:
            self.requests += 1
            self.seen.append((request.method, request.path, request.headers.get("User-Agent", ""), credential))
            drop = self._drop > 0
            if drop:
                self._drop -= 1
                self.dropped += 1
            redirect = request.method == "GET" and self._wrong_region > 0
            if redirect:
                self._wrong_region -= 1
        body = await request.read()
        if self.latency:
            await asyncio.sleep(self.latency)
        if drop:
            request.transport.close()  # the client sees its connection reset, no answer
            return web.Response(status=500)
        if redirect:
            return web.Response(status=301, body=PERMANENT_REDIRECT, content_type="application/xml",
                                headers={"x-amz-bucket-region": "us-east-1"})
        if time.monotonic() < self._outage_until and self._outage_only in request.path:
            with self._lock:
                self.refused += 1
            return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
        listed = self._list_answer(request) if self._listings else None
        if listed is not None:
            return listed
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(request.method, self.upstream + request.rel_url.raw_path_qs,
                                         headers=headers, data=body or None,
                                         allow_redirects=False) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.method == "HEAD":
            # Keep the object's Content-Length on a body-less answer: s3fs sizes files from it.
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            response.content_length = int(out_headers.get("Content-Length", 0))
            await response.prepare(request)
            return response
        out_headers.pop("Content-Length", None)
        return web.Response(status=upstream.status, body=payload, headers=out_headers)


def use_benchmark_credentials() -> None:
    """Fake AWS credentials and region for a benchmark's own moto server, and moto's request log quieted
    (werkzeug logs every request otherwise). Tests use conftest's fixtures, which restore the environment."""
    import logging
    import os

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def fault_proxy(upstream: str, latency: float = 0.0) -> Iterator[S3FaultProxy]:
    proxy = S3FaultProxy(upstream, latency).start()
    try:
        yield proxy
    finally:
        proxy.stop()
