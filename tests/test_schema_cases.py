"""The shared table of tests/schema_cases.py run against both validators: the API stand-in over
real HTTP (the kubernetes client), and kimpki's own through the real CLI (``check -f``, which
refuses a manifest the API server would refuse, at its FILE:LINE)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import assert_one_line_error
from tests.kubeapi.fixtures import *  # noqa: F401,F403
from tests.schema_cases import CASES

PARAMS = [pytest.param(obj, refused, kimpki_says, id=case_id) for case_id, obj, refused, kimpki_says in CASES]


@pytest.mark.parametrize("obj,refused,kimpki_says", PARAMS)
def test_the_standin_refuses_or_accepts(kube_api, kube_client, obj, refused, kimpki_says):
    from kubernetes import client as k
    from kubernetes.client import ApiException

    api = k.CustomObjectsApi(kube_client)
    create = lambda: api.create_namespaced_custom_object(  # noqa: E731
        "networking.istio.io", "v1", "istio-system", "virtualservices", obj)
    if refused is None:
        create()
        assert [o["metadata"]["name"] for o in kube_api.list_objects("virtualservices", "istio-system")] == \
            [obj["metadata"]["name"]]
        return
    with pytest.raises(ApiException) as e:
        create()
    assert e.value.status == 422
    shown = refused[0] if len(refused) == 1 else "[" + ", ".join(refused) + "]"
    body = json.loads(e.value.body)
    assert body["message"] == f'VirtualService.networking.istio.io "{obj["metadata"]["name"]}" is invalid: {shown}'


@pytest.mark.parametrize("obj,refused,kimpki_says", PARAMS)
def test_kimpki_refuses_or_accepts(kimpki, tmp_path, obj, refused, kimpki_says):
    path = tmp_path / "vs.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    res = kimpki("check", "-f", path, "--json")
    if refused is None:
        assert res.code == 0, res.err
        return
    assert_one_line_error(res, 2, f"{path}:", "does not match Istio's networking.istio.io/v1 schema", kimpki_says)
