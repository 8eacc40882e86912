"""``GET /`` and ``HEAD /``: the cluster's name and version, which the client checks before anything else."""
from __future__ import annotations

from typing import Any

from tests.es_double.rest import Routes, check_params
from tests.es_double.state import Cluster

ROUTES = Routes()


@ROUTES.route("GET", "HEAD", path="/")
def info(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, set(), "/")
    major = max(cluster.compat)
    return 200, {"name": "es-double", "cluster_name": "es-double", "cluster_uuid": "es-double-cluster",
                 "version": {"number": f"{major}.0.0", "build_flavor": "default", "lucene_version": "10.0.0",
                             "minimum_wire_compatibility_version": f"{major - 1}.18.0",
                             "minimum_index_compatibility_version": f"{major - 1}.0.0"},
                 "tagline": "You Know, for Search"}
