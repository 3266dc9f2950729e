"""The pinned third-party CRDs install on the local control plane and are removed after."""

from __future__ import annotations

import pytest

from tests.conftest import InstallCRDs, Kubectl
from trtllm_operator.localcluster.extcrds import (
    INFERENCE_EXTENSION,
    KEDA,
    PROMETHEUS_OPERATOR,
    CRDSource,
)


@pytest.mark.parametrize("source", [KEDA, INFERENCE_EXTENSION, PROMETHEUS_OPERATOR],
                         ids=lambda s: s.name)
def test_crds_install_and_serve_their_kinds(third_party_crds: InstallCRDs, kubectl: Kubectl,
                                            source: CRDSource) -> None:
    names = third_party_crds(source)
    assert names == list(source.crd_names)
    for name in names:
        plural = name.split(".", 1)[0]
        out = kubectl("get", plural, "--all-namespaces", "-o", "name").stdout
        assert out.strip() == ""
