"""The stale-update guard's two write modes, named without the Elasticsearch client.

``document``: the job owns the document and upserts all of it; ``score``: only the
score fields, onto documents another indexer owns. Flag definitions
(``pipelines.flags``) need the names for ``--help`` without importing the client.
"""
from __future__ import annotations

DOCUMENT = "document"
SCORE = "score"
WRITE_MODES = (DOCUMENT, SCORE)
