"""One table of objects that the test API stand-in (tests/kubeapi/openapi.py) and kimpki's own
validation (kimpki/istio/schema.py) must both accept or both refuse: the ``oneOf`` and ``format``
parts of Istio's VirtualService schema. ``refused``: the real API server's field errors (None:
accepted), in apiextensions-apiserver's and kube-openapi's words (see tests/kubeapi/openapi.py);
``kimpki``: what kimpki's message says instead."""

from __future__ import annotations

import copy

from tests.test_standin_openapi import SKIPPED


def virtual_service(name: str, **http) -> dict:
    route = [{"destination": {"host": "kim-gateway-service.default.svc.cluster.local", "port": {"number": 8080}}}]
    rule = {"route": route, **http} if "directResponse" not in http and "redirect" not in http else dict(http)
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "istio-system"},
            "spec": {"hosts": ["kim.example.com"], "gateways": ["kim-gateway"], "http": [copy.deepcopy(rule)]}}


def _one_of(path: str, found: int) -> str:
    return f'<nil>: Invalid value: "": "{path}" must validate one and only one schema (oneOf). Found {found} valid alternatives'


MATCH = "spec.http[0].match[0]"
BODY = "spec.http[0].directResponse.body"
CASES = [
    # (id, object, the API server's errors or None, what kimpki's first message says)
    ("uri-exact", virtual_service("uri-exact", match=[{"uri": {"exact": "/a"}}]), None, None),
    ("uri-none", virtual_service("uri-none", match=[{"uri": {}}]), None, None),
    ("uri-two", virtual_service("uri-two", match=[{"uri": {"exact": "/a", "prefix": "/b"}}]),
     [_one_of(f"{MATCH}.uri", 2)], f"{MATCH}.uri: must validate one and only one schema (oneOf): "
                                   f"set at most one of exact, prefix, regex"),
    ("header-three", virtual_service("header-three", match=[{"headers": {"x-user": {
        "exact": "a", "prefix": "b", "regex": "c"}}}]),
     [_one_of(f"{MATCH}.headers.x-user", 3)], f"{MATCH}.headers.x-user: must validate one and only one schema"),
    ("redirect-two", virtual_service("redirect-two", redirect={"uri": "/x", "port": 8443,
                                                               "derivePort": "FROM_REQUEST_PORT"}),
     [_one_of("spec.http[0].redirect", 2)], "spec.http[0].redirect: must validate one and only one schema"),
    ("bytes-base64", virtual_service("bytes-base64", directResponse={"status": 200, "body": {"bytes": "aGVsbG8="}}),
     None, None),
    ("bytes-not-base64", virtual_service("bytes-not-base64", directResponse={"status": 200,
                                                                             "body": {"bytes": "hello!"}}),
     [f'{BODY}.bytes: Invalid value: "hello!": {BODY}.bytes in body must be of type byte: "hello!"', SKIPPED],
     f'{BODY}.bytes: must be of type byte: "hello!"'),
    ("bytes-unpadded", virtual_service("bytes-unpadded", directResponse={"status": 200, "body": {"bytes": "aGVsbG8"}}),
     [f'{BODY}.bytes: Invalid value: "aGVsbG8": {BODY}.bytes in body must be of type byte: "aGVsbG8"', SKIPPED],
     f'{BODY}.bytes: must be of type byte'),
    ("bytes-space", virtual_service("bytes-space", directResponse={"status": 200, "body": {"bytes": "aGVs bG8="}}),
     [f'{BODY}.bytes: Invalid value: "aGVs bG8=": {BODY}.bytes in body must be of type byte: "aGVs bG8="', SKIPPED],
     f'{BODY}.bytes: must be of type byte'),
    ("body-both", virtual_service("body-both", directResponse={"status": 200, "body": {"string": "a",
                                                                                      "bytes": "YQ=="}}),
     [_one_of(BODY, 2)], f"{BODY}: must validate one and only one schema (oneOf): set at most one of string, bytes"),
]
