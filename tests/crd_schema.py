"""Validating custom resources offline against the CRDs their projects publish (vendored in tests/crds/).

No API server runs here, so the CRD's OpenAPI v3 schema is checked with `jsonschema`, made strict the way an API
server's `fieldValidation=Strict` is: an object schema that lists its properties refuses any other field (unless
it says `x-kubernetes-preserve-unknown-fields` or has `additionalProperties` of its own). What is not checked: the
CRDs' CEL rules (`x-kubernetes-validations`) and the projects' admission webhooks.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"
FILES = {
    ("jobset.x-k8s.io", "JobSet"): "jobset.x-k8s.io_jobsets.yaml",
    ("trainer.kubeflow.org", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
    ("trainer.kubeflow.org", "TrainingRuntime"): "trainer.kubeflow.org_trainingruntimes.yaml",
    ("trainer.kubeflow.org", "ClusterTrainingRuntime"): "trainer.kubeflow.org_trainingruntimes.yaml",
}


def crd(group: str, kind: str) -> dict:
    """The vendored CustomResourceDefinition of `kind` (the file may hold several, e.g. the runtimes')."""
    for doc in yaml.safe_load_all((CRDS / FILES[(group, kind)]).read_text()):
        if doc and doc["spec"]["group"] == group and doc["spec"]["names"]["kind"] == kind:
            return doc
    raise KeyError(f"{group} {kind} is not in {FILES[(group, kind)]}")


def _strict(schema: dict) -> dict:
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_strict(sub) for sub in value]
        else:
            out[key] = value
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    # OpenAPI's `nullable: true`: the API server takes null for such a field
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    group, version = api_version.split("/")
    definition = crd(group, kind)
    served = [v for v in definition["spec"]["versions"] if v["name"] == version and v.get("served")]
    assert served, f"{kind}: version {version} is not served by the vendored CRD"
    schema = _strict(copy.deepcopy(served[0]["schema"]["openAPIV3Schema"]))
    # apiVersion, kind and metadata are checked by the API server itself, not by the CRD's schema
    schema.setdefault("properties", {}).update(
        apiVersion={"const": api_version}, kind={"const": kind}, metadata={"type": "object"}
    )
    return jsonschema.Draft7Validator(schema)


def errors(obj: dict) -> list[str]:
    """Every way `obj` breaks its CRD's schema, as 'path: message' (empty when valid)."""
    found = validator(obj["apiVersion"], obj["kind"]).iter_errors(obj)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found)
