"""Names that flags and ``--help`` need, kept free of the Elasticsearch client (which takes a second to import).

The stale-update guard's write modes (``document``: the job owns the document
and upserts all of it; ``score``: only the score fields, onto documents another
indexer owns) and the boosting formulas, rank functions and platforms.
``es.guard`` and ``es.boosting`` use these.
"""
from __future__ import annotations

DOCUMENT = "document"
SCORE = "score"
WRITE_MODES = (DOCUMENT, SCORE)

RELEVANCE_NAME = "relevance"
FORMULAS = ("multiplicative", "power", "additive", "rank_feature")
RANK_FUNCTIONS = ("saturation", "log", "sigmoid", "linear")
PLATFORMS = ("web", "ios", "android")
