"""``imagescore query``: print the boosted search, or run it and show Elasticsearch's ``explain`` tree per hit.

The base query is a JSON file (``--base-query``; mark the relevance clause
with ``"_name": "relevance"`` for the additive formulas) or a ``match`` on
``--field`` (``--match``). The formula and w come from the flags, or per
platform from ``--platform-config`` (``{"default": {...}, "web": {"formula":
..., "w": ...}}``) with ``--platform``. With ``--es-url`` (or ``$ES_URL``) the
search runs with ``explain`` and ``include_named_queries_score``; credentials
come from the environment (see ``es.client``).
"""
from __future__ import annotations

import argparse
import json

from cli_common import ArgumentParser, UsageError, job_main
from es.names import FORMULAS, PLATFORMS, RANK_FUNCTIONS, RELEVANCE_NAME

# elasticsearch (a second to import) and the query builders on it are imported by the functions that build.


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore query", description=__doc__.split("\n\n")[0])
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--base-query", help="JSON file holding the query to boost")
    base.add_argument("--match", help="boost a match query on --field for this text")
    p.add_argument("--field", default="title", help="field of --match")
    p.add_argument("--formula", choices=FORMULAS, default="multiplicative")
    p.add_argument("--w", type=float, default=0.3, help="weight of the image score")
    p.add_argument("--missing", type=float, default=0.5, help="image score of documents without one")
    p.add_argument("--ai-factor", type=float, default=1.0,
                   help="multiply the score of listings whose image says AI made it (image_provenance) by this, "
                        "e.g. 0.8; 1 leaves them alone")
    p.add_argument("--rank-function", choices=RANK_FUNCTIONS, default="saturation")
    p.add_argument("--rank-params", default='{"pivot": 0.5}', help="rank_feature function parameters (JSON)")
    p.add_argument("--platform", choices=PLATFORMS, help="use this platform's formula and w from --platform-config")
    p.add_argument("--platform-config", help="JSON of per-platform boosts (see the module help)")
    p.add_argument("--rescore-window", type=int, help="apply the boost as a rescore of this many top hits")
    p.add_argument("--es-url", help="run the search on this cluster and print the hits with explain (credentials from the environment)")
    p.add_argument("--es-index", dest="es_index", default="items", help="index (or pattern) to search")
    p.add_argument("--size", type=int, default=5, help="hits to show")
    return p


def _base(args) -> dict:
    from elasticsearch.dsl import Q
    if args.match is not None:
        return Q("match", **{args.field: {"query": args.match, "_name": RELEVANCE_NAME}}).to_dict()
    try:
        with open(args.base_query) as fh:
            base = json.load(fh)
    except OSError as exc:
        raise UsageError(f"--base-query {args.base_query}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--base-query {args.base_query}: not JSON ({exc})") from None
    if isinstance(base, dict) and set(base) == {"query"}:
        base = base["query"]  # a whole search body is fine too
    if not isinstance(base, dict) or len(base) != 1:
        raise UsageError(f"--base-query {args.base_query}: expected one query object like {{\"match\": {{...}}}}")
    return base


def body_for(args) -> dict:
    """The search body the flags describe."""
    from es.boosting import Boost, PlatformBoosts, search_body
    try:
        default = Boost(args.formula, args.w, args.missing, rank_function=args.rank_function,
                        rank_params=json.loads(args.rank_params), ai_factor=args.ai_factor)
        boosts = (PlatformBoosts.from_json(args.platform_config, default) if args.platform_config
                  else PlatformBoosts(default))
        if args.platform and not args.platform_config:
            raise ValueError("--platform needs --platform-config (the per-platform formulas and weights)")
        return search_body(_base(args), boosts.for_platform(args.platform), rescore_window=args.rescore_window)
    except ValueError as exc:
        raise UsageError(f"imagescore query: {exc}") from None


def explain_lines(explanation: dict, depth: int = 0) -> list[str]:
    """Elasticsearch's explanation tree, indented."""
    lines = [f"{'  ' * depth}{explanation.get('value')} = {explanation.get('description', '')}"]
    for detail in explanation.get("details", []):
        lines += explain_lines(detail, depth + 1)
    return lines


def run_search(url: str, index: str, body: dict, size: int) -> dict:
    from es.client import EsConfig, EsError, make_client, scrubbed_errors, usage_message
    config = EsConfig.from_env(url)
    client = make_client(config)
    try:
        with scrubbed_errors(f"search of {index!r}"):
            return client.search(index=index, **body, size=size, explain=True,
                                 include_named_queries_score=True).body
    except EsError as exc:
        raise UsageError(usage_message(exc, config)) from None
    finally:
        client.close()


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    body = body_for(args)
    if not args.es_url:
        print(json.dumps(body, indent=2))
        return 0
    response = run_search(args.es_url, args.es_index, body, args.size)
    for hit in response["hits"]["hits"]:
        source = hit.get("_source", {})
        print(f"{hit['_id']}  score {hit['_score']}  image_score {source.get('image_score', 'missing')}  "
              f"provenance {source.get('image_provenance', 'unknown')}  "
              f"matched {json.dumps(hit.get('matched_queries', {}))}")
        print("\n".join("    " + line for line in explain_lines(hit.get("_explanation", {}))))
    return 0


if __name__ == "__main__":
    job_main("python -m ranking.query", run)
