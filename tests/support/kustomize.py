"""Render deploy/kubernetes the way ``kubectl apply -k`` would, for the subset it uses.

kustomize is not available offline, so this reads a kustomization's ``resources`` (files
and directories with their own kustomization), sets ``namespace`` on namespaced objects,
adds the ``labels`` pairs to every object's metadata (not to selectors:
``includeSelectors`` is off), and applies ``patches`` as strategic merges of mappings
(matched by kind and name). Any other kustomization key fails loudly rather than being
ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KNOWN_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}

Doc = dict[str, Any]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


def render(directory: Path) -> list[Doc]:
    """The objects of the kustomization in ``directory``."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN_KEYS
    assert not unknown, f"{directory}: kustomization keys this renderer does not do: {unknown}"
    docs: list[Doc] = []
    for resource in spec.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in spec.get("patches", []):
        body = yaml.safe_load((directory / patch["path"]).read_text())
        targets = [
            d
            for d in docs
            if d["kind"] == body["kind"] and d["metadata"]["name"] == body["metadata"]["name"]
        ]
        assert len(targets) == 1, f"patch {patch['path']} matches {len(targets)} objects"
        docs[docs.index(targets[0])] = _merge(targets[0], body)
    for doc in docs:
        if spec.get("namespace") and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = spec["namespace"]
        for entry in spec.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    return docs


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The one object of ``kind`` (and ``name``)."""
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} objects of kind {kind} named {name}"
    return found[0]
