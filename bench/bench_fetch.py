"""Benchmark: concurrent guarded fetching vs. a plain serial ``requests.get`` loop.

A local server (127.0.0.1) adds a fixed latency to every image, like a slow
remote CDN. A serial loop pays that latency once per image; the fetcher
overlaps it across ``--concurrency`` pooled connections. Both read the same
URLs in the same run, and the bytes are compared so speed cannot come from
skipping work. Prints one line:

    RESULT bench=fetch ours_img_per_s=... naive_img_per_s=... ratio=... target=10.0 ok=true
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from tests.fixtures.image_server import ImageServer
from transforms.fetch import FetchPolicy, ImageFetcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server delay added to every image")
    parser.add_argument("--kib", type=int, default=40, help="size of each image")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--target", type=float, default=10.0, help="speed-up over the serial loop required")
    args = parser.parse_args(argv)

    with ImageServer() as server:
        urls = [server.route(f"img-{i}.jpg", body=os.urandom(args.kib * 1024), content_type="image/jpeg",
                             delay=args.latency_ms / 1000) for i in range(args.images)]

        start = time.perf_counter()
        naive = []
        for url in urls:
            response = requests.get(url, timeout=10)
            response.raise_for_status()
            naive.append(response.content)
        naive_s = time.perf_counter() - start

        policy = FetchPolicy(allowed_hosts=frozenset({server.host_port}), concurrency=args.concurrency)
        with ImageFetcher(policy) as fetcher:
            start = time.perf_counter()
            ours = fetcher.fetch_many(urls)
            ours_s = time.perf_counter() - start

    failures = [r for r in ours if not isinstance(r, bytes)]
    if failures:
        print(f"fetcher failed {len(failures)} of {len(urls)} images, first: {failures[0]!r}", file=sys.stderr)
        return 1
    if ours != naive:
        print("fetcher returned different bytes than the serial loop", file=sys.stderr)
        return 1
    ratio = naive_s / ours_s
    ok = ratio >= args.target
    print(f"RESULT bench=fetch ours_img_per_s={args.images / ours_s:.1f} naive_img_per_s={args.images / naive_s:.1f} "
          f"ratio={ratio:.1f} target={args.target} ok={str(ok).lower()} images={args.images} "
          f"latency_ms={args.latency_ms:g} concurrency={args.concurrency}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
