"""The documents' Kubernetes manifests are valid against the Kubernetes
schemas (kubernetes-validate, offline: no cluster is at hand): every YAML
block of docs/*.md and README.md, each document of it that has apiVersion
and kind. A fragment (volumes: ..., env: ...) is shown for its lines only."""

import pathlib
import re

import pytest

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip("kubernetes_validate")

ROOT = pathlib.Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^( *)```yaml\n(.*?)^\1```", re.S | re.M)


def manifests():
    for path in sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md"]:
        for k, m in enumerate(FENCE.finditer(path.read_text(encoding="utf-8"))):
            indent = len(m.group(1))
            text = "\n".join(line[indent:] for line in m.group(2).splitlines())
            for n, doc in enumerate(yaml.safe_load_all(text)):
                if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                    yield pytest.param(doc, id=f"{path.name}-{k}-{n}-{doc['kind']}")


MANIFESTS = list(manifests())


def test_the_documents_have_manifests():
    kinds = sorted(p.values[0]["kind"] for p in MANIFESTS)
    assert kinds == ["DaemonSet", "Deployment", "PersistentVolumeClaim", "Service",
                     "StatefulSet"]


@pytest.mark.parametrize("doc", MANIFESTS)
def test_every_manifest_is_valid_for_kubernetes(doc):
    kv.validate(doc, kv.latest_version(), strict=True)  # raises on an unknown or wrong field
