"""``python -m tests.es_double --port 9200``: run the double by hand, for a laptop or the stream demo."""
from __future__ import annotations

import argparse
import time

from tests.es_double.server import EsDouble


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the strict Elasticsearch test double by hand.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; keep it local)")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--compat", default="8,9", help="client majors to accept (compatible-with), e.g. 8 or 8,9")
    args = parser.parse_args(argv)
    double = EsDouble(args.host, args.port, compat=[int(v) for v in args.compat.split(",")])
    double.start()
    print(f"ES double listening on {double.url} (Ctrl-C to stop); state lives in memory only", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
