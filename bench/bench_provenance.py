"""What reading the provenance signal costs, against fetching and decoding the same images.

Builds 1024-px listing photos carrying each kind of metadata the signal reads (none, XMP
digitalSourceType, EXIF Software, an AUTOMATIC1111 PNG chunk, a C2PA manifest signed with a
throwaway test CA), serves them from 127.0.0.1, and times, per image: fetch + decode
(``ImageFetcher.fetch`` then ``decode_image``, the chain the jobs run) and
``read_provenance`` on the same bytes. The share is provenance time over fetch + decode
time, over the whole mix and for the C2PA images alone (the dearest: a signature check).
Prints one RESULT line; the target is a share <= 5% over the mix.

    .venv/bin/python bench/bench_provenance.py [--images 40] [--rounds 3] [--size 384]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from scoring.photos import draw_product  # noqa: E402
from tests.fixtures import provenance_images as fx  # noqa: E402
from tests.fixtures.image_server import ImageServer  # noqa: E402
from transforms.decode import decode_image  # noqa: E402
from transforms.fetch import FetchPolicy, ImageFetcher  # noqa: E402
from transforms.provenance import read_provenance  # noqa: E402

TARGET_SHARE = 0.05
KINDS = ("plain", "xmp", "exif", "a1111", "c2pa")


def _photo(i: int, kind: str) -> tuple[bytes, str]:
    img = draw_product(np.random.default_rng(i), 1024).crop((0, 128, 1024, 896))
    out = io.BytesIO()
    if kind == "a1111":
        from PIL import PngImagePlugin
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a chair on a table\nSteps: 20, Sampler: Euler a, CFG scale: 7")
        img.save(out, "PNG", pnginfo=info)
        return out.getvalue(), "image/png"
    kwargs = {}
    if kind == "xmp":
        kwargs["xmp"] = fx.xmp_packet("trainedAlgorithmicMedia")
    if kind == "exif":
        from PIL import Image
        exif = Image.Exif()
        exif[305] = "Midjourney v6"
        kwargs["exif"] = exif.tobytes()
    img.save(out, "JPEG", quality=90, **kwargs)
    data = out.getvalue()
    if kind == "c2pa":
        data = fx.c2pa_sign_jpeg(data, "trainedAlgorithmicMedia", "bench generator")
    return data, "image/jpeg"


def _time(fn, items: list, rounds: int) -> float:
    """Best total seconds over ``rounds`` passes of ``fn`` over ``items``."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="images in the mix (spread over the kinds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=384, help="model input side")
    args = parser.parse_args(argv)
    blobs = [(KINDS[i % len(KINDS)], *_photo(i, KINDS[i % len(KINDS)])) for i in range(args.images)]
    with ImageServer() as server:
        urls = [server.route(f"/{i}", body=data, content_type=ctype) for i, (_, data, ctype) in enumerate(blobs)]
        policy = FetchPolicy(allowed_hosts=frozenset({server.host_port}))
        with ImageFetcher(policy) as fetcher:
            pipeline_s = _time(lambda url: decode_image(fetcher.fetch(url), args.size), urls, args.rounds)
            c2pa_urls = [u for u, (kind, _, _) in zip(urls, blobs) if kind == "c2pa"]
            c2pa_pipeline_s = _time(lambda url: decode_image(fetcher.fetch(url), args.size), c2pa_urls, args.rounds)
    provenance_s = _time(lambda blob: read_provenance(blob[1]), blobs, args.rounds)
    c2pa_blobs = [b for b in blobs if b[0] == "c2pa"]
    c2pa_provenance_s = _time(lambda blob: read_provenance(blob[1]), c2pa_blobs, args.rounds)
    found = {kind: read_provenance(data).value for kind, data, _ in blobs}
    share = provenance_s / pipeline_s
    c2pa_share = c2pa_provenance_s / c2pa_pipeline_s if c2pa_blobs else float("nan")
    ok = share <= TARGET_SHARE
    print(f"RESULT bench=provenance images={len(blobs)} size={args.size} "
          f"fetch_decode_ms={1000 * pipeline_s / len(blobs):.2f} provenance_ms={1000 * provenance_s / len(blobs):.3f} "
          f"share={share:.4f} c2pa_provenance_ms={1000 * c2pa_provenance_s / max(1, len(c2pa_blobs)):.3f} "
          f"c2pa_share={c2pa_share:.4f} found={','.join(f'{k}:{v}' for k, v in sorted(found.items()))} "
          f"target={TARGET_SHARE} ok={str(ok).lower()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
