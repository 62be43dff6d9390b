"""deploy/: every manifest checked against the real schemas, without a cluster.

* Kubernetes' own kinds: kubernetes-validate's schemas for Kubernetes 1.37, strict (an unknown
  field is an error).
* KServe's ServingRuntime, InferenceService and LLMInferenceService: the KServe SDK's models
  (deploy/schemas/kserve-0.21.0.json, generated from the kserve wheel), with Kubernetes' schemas
  for the Kubernetes types inside them (containers, probes, resources, ...).
* KEDA's ScaledObject and prometheus-operator's PodMonitor: models generated from their CRDs
  (cloudcoil-models-keda, cloudcoil-models-prometheus-operator).
* Argo CD's Application and the LLMInferenceService spec: hand-written schemas, clearly labelled
  (no package ships theirs); Kubernetes types inside them still against Kubernetes' schemas.

And beyond the schemas: every minillm container's command line parses with minillm's own CLI
parser (and the router's with vllm-router's), every `vllm:` metric an autoscaler or a monitor
names exists in the server's /metrics, probes and scrape paths are routes the server has, and
`kustomize build` (kubectl's built-in kustomize) renders each overlay. A broken copy of each
manifest (an unknown field, an unknown flag, a metric that does not exist) must fail.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator
from jsonschema import Draft202012Validator
from kubernetes_validate.utils import latest_version, schema_contents
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource

from minillm.engine.stats import EngineStats
from minillm.entrypoints.cli import build_parser
from minillm.entrypoints.openai import api_server, cluster_routes
from minillm.entrypoints.openai.metrics import ServerMetrics

DEPLOY = Path(__file__).parents[1] / "deploy"
SCHEMAS = DEPLOY / "schemas"
K8S_VERSION = latest_version()
K8S_DEFS = schema_contents(f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json",
                           K8S_VERSION)
REGISTRY = Resource.from_contents(K8S_DEFS) @ Registry()
KSERVE = json.loads((SCHEMAS / "kserve-0.21.0.json").read_text())["models"]
HAND_WRITTEN = {name: json.loads((SCHEMAS / f"{name}.hand-written.json").read_text())
                for name in ("argocd-application", "llminferenceservice-spec")}
MINILLM_COMMANDS = (["python", "-m", "minillm.entrypoints.openai.api_server"], ["minillm", "serve"])


# -- reading the manifests ----------------------------------------------------------------------
def manifest_files(root: Path = DEPLOY) -> list[Path]:
    return sorted(p for p in root.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize(overlay: Path) -> list[dict]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True,
                          timeout=60)
    if done.returncode:
        raise AssertionError(f"kustomize build {overlay} failed: {done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def strings(value):
    """Every string anywhere in a document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def containers(doc: dict) -> list[dict]:
    """The containers of a pod-making kind (where each kind keeps them)."""
    spec = doc.get("spec", {})
    kind = doc["kind"]
    if kind == "ServingRuntime":
        return spec.get("containers", [])
    if kind == "LLMInferenceService":
        return spec.get("template", {}).get("containers", [])
    if kind in ("Deployment", "StatefulSet", "Job"):
        return spec["template"]["spec"].get("containers", [])
    return []


# -- schema checks: each returns a list of errors -----------------------------------------------
def k8s_errors(value, definition: str, where: str) -> list[str]:
    schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{definition}"}
    return schema_errors(value, schema, where)


def schema_errors(value, schema: dict, where: str) -> list[str]:
    validator = Draft202012Validator(schema, registry=REGISTRY)
    return [".".join([where, *map(str, e.absolute_path)]) + f": {e.message}"
            for e in validator.iter_errors(value)]


def k8s_definition(type_name: str) -> str | None:
    """The KServe SDK's name of a Kubernetes type -> its name in Kubernetes' schemas:
    V1Container -> io.k8s.api.core.v1.Container, K8sIoApiAppsV1DeploymentStrategy ->
    io.k8s.api.apps.v1.DeploymentStrategy."""
    m = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w+)", type_name)
    if m:
        return f"io.k8s.api.{m[1].lower()}.{m[2].lower()}.{m[3]}"
    m = re.fullmatch(r"V1([A-Z]\w+)", type_name)
    if m:
        for group in ("io.k8s.api.core.v1", "io.k8s.apimachinery.pkg.apis.meta.v1"):
            if f"{group}.{m[1]}" in K8S_DEFS["$defs"]:
                return f"{group}.{m[1]}"
    return None


PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str,
              "object": object, "ResourceQuantity": (str, int, float),
              "V1beta1MetricQuantity": (str, int, float)}


def kserve_errors(value, type_name: str, where: str) -> list[str]:
    """`value` against the KServe SDK's type `type_name`: unknown fields, missing required
    ones and wrong types are errors; Kubernetes types go to Kubernetes' schemas."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in kserve_errors(v, type_name[5:-1],
                                                                      f"{where}.{i}")]
    if type_name.startswith("dict(str, "):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [e for k, v in value.items() for e in kserve_errors(v, type_name[10:-1],
                                                                   f"{where}.{k}")]
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (
            isinstance(value, bool) and type_name in ("int", "float"))
        return [] if ok else [f"{where}: {value!r} is not {type_name}"]
    if type_name == "V1alpha1LLMInferenceServiceSpec":
        return schema_errors(value, HAND_WRITTEN["llminferenceservice-spec"], where)
    if type_name in KSERVE:
        model = KSERVE[type_name]
        if not isinstance(value, dict):
            return [f"{where}: expected a {type_name} mapping"]
        errors = [f"{where}.{k}: unknown field of {type_name}" for k in value
                  if k not in model["properties"]]
        errors += [f"{where}.{k}: required by {type_name}" for k in model["required"]
                   if k not in value]
        return errors + [e for k, v in value.items() if k in model["properties"]
                         for e in kserve_errors(v, model["properties"][k], f"{where}.{k}")]
    definition = k8s_definition(type_name)
    if definition is None:
        return [f"{where}: no schema for {type_name}"]
    return k8s_errors(value, definition, where)


def unknown_fields(given, kept, where: str) -> list[str]:
    """Paths in `given` that a pydantic model dropped (its models ignore unknown fields)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [e for k, v in given.items()
                for e in ([f"{where}.{k}: unknown field"] if k not in kept
                          else unknown_fields(v, kept[k], f"{where}.{k}"))]
    if isinstance(given, list) and isinstance(kept, list):
        return [e for i, (g, k) in enumerate(zip(given, kept))
                for e in unknown_fields(g, k, f"{where}.{i}")]
    return []


def pydantic_errors(model, doc: dict, where: str) -> list[str]:
    try:
        kept = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True,
                                                    mode="json")
    except pydantic.ValidationError as e:
        return [f"{where}: {e}"]
    return unknown_fields(doc, kept, where)


KSERVE_KINDS = {("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
                ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
                ("serving.kserve.io/v1alpha1", "LLMInferenceService"):
                    "V1alpha1LLMInferenceService"}
PYDANTIC_KINDS = {("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
                  ("monitoring.coreos.com/v1", "PodMonitor"): prometheus_operator.PodMonitor,
                  ("monitoring.coreos.com/v1", "ServiceMonitor"):
                      prometheus_operator.ServiceMonitor}


def schema_check(doc: dict) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    where = f"{key[1]}/{doc.get('metadata', {}).get('name')}"
    if key in KSERVE_KINDS:
        return kserve_errors(doc, KSERVE_KINDS[key], where)
    if key in PYDANTIC_KINDS:
        return pydantic_errors(PYDANTIC_KINDS[key], doc, where)
    if key == ("argoproj.io/v1alpha1", "Application"):
        return schema_errors(doc, HAND_WRITTEN["argocd-application"], where)
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{where}: no schema: {e.message}"]
    return []


# -- beyond the schemas -------------------------------------------------------------------------
def parse_errors(argv: list[str], where: str) -> list[str]:
    """minillm's own parser on a server command line (its `minillm serve` arguments)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(["serve", *argv])
    except SystemExit:
        return [f"{where}: {argv}: {stderr.getvalue().strip().splitlines()[-1]}"]
    return []


def router_parse_errors(argv: list[str], where: str) -> list[str]:
    from vllm_router.launch_router import parse_router_args

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse_router_args(argv)
    except SystemExit:
        return [f"{where}: {argv}: {stderr.getvalue().strip().splitlines()[-1]}"]
    return []


def command_line_errors(docs: list[dict]) -> list[str]:
    """Each minillm container's args ({{.Name}} filled in) through minillm's parser, and once
    more with each InferenceService's model args appended, as KServe runs them; a router's
    through vllm-router's parser."""
    errors, runtime_args = [], {}
    for doc in docs:
        for c in containers(doc):
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            command, args = c.get("command", []), c.get("args", [])
            if command in MINILLM_COMMANDS:
                args = [a.replace("{{.Name}}", "model") for a in args]
                runtime_args[doc["metadata"]["name"]] = args
                errors += parse_errors(args, where)
            elif command == ["vllm-router"]:
                errors += router_parse_errors(args, where)
            else:
                errors.append(f"{where}: runs {command}, neither minillm's server nor the router")
    for doc in docs:
        if doc["kind"] == "InferenceService":
            model = doc["spec"]["predictor"]["model"]
            args = runtime_args.get(model.get("runtime"), []) + model.get("args", [])
            errors += parse_errors(args, f"InferenceService/{doc['metadata']['name']}")
    return errors


def served_metric_names() -> set[str]:
    """Every series name the server's /metrics exposes (its module, on idle engine stats)."""
    text = generate_latest(ServerMetrics(EngineStats(num_blocks=1), "m").registry).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def metric_errors(docs: list[dict]) -> tuple[list[str], int]:
    """`vllm:` names in queries, rules and relabelings that /metrics does not have; and how
    many names were checked."""
    served = served_metric_names()
    named = [name for doc in docs for s in strings(doc)
             for name in re.findall(r"vllm:[A-Za-z0-9_:]+", s)]
    return [f"{name}: not in the server's /metrics" for name in named if name not in served], \
        len(named)


def server_routes() -> set[str]:
    return {r.path for r in [*api_server.router.routes, *cluster_routes.router.routes]}


def route_errors(docs: list[dict]) -> list[str]:
    """Probe and Prometheus scrape paths must be routes the server serves."""
    routes, errors = server_routes(), []
    for doc in docs:
        spec = doc.get("spec", {})
        paths = [spec.get("annotations", {}).get("prometheus.io/path")]
        paths += [e.get("path") for e in spec.get("podMetricsEndpoints", [])]
        for c in containers(doc):
            if c.get("command") in MINILLM_COMMANDS:
                paths += [c.get(p, {}).get("httpGet", {}).get("path")
                          for p in ("readinessProbe", "livenessProbe", "startupProbe")]
        errors += [f"{doc['kind']}/{doc['metadata']['name']}: {p} is not a server route"
                   for p in paths if p is not None and p not in routes]
    return errors


def all_errors(docs: list[dict]) -> list[str]:
    return ([e for d in docs for e in schema_check(d)] + command_line_errors(docs)
            + metric_errors(docs)[0] + route_errors(docs))


# -- the manifests as committed -----------------------------------------------------------------
ALL_DOCS = [d for f in manifest_files() for d in documents(f)]


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_each_manifest_validates(path):
    docs = documents(path)
    assert docs, f"{path} has no document"
    errors = [e for d in docs for e in schema_check(d)] + route_errors(docs)
    assert not errors, "\n".join(errors)


def test_every_minillm_command_line_parses():
    assert sum(len(containers(d)) for d in ALL_DOCS) >= 3  # runtime, llm-d, router
    errors = command_line_errors(ALL_DOCS)
    assert not errors, "\n".join(errors)


def test_metric_names_in_autoscaling_and_monitors_exist():
    errors, checked = metric_errors(ALL_DOCS)
    assert checked >= 1, "no vllm: metric named anywhere: the check proved nothing"
    assert not errors, "\n".join(errors)
    assert "vllm:num_requests_waiting" in served_metric_names()


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_overlay_renders_and_validates(overlay):
    docs = kustomize(DEPLOY / "overlays" / overlay)
    kinds = {d["kind"] for d in docs}
    assert {"ServingRuntime", "InferenceService", "PodMonitor", "Deployment"} <= kinds, kinds
    assert {d["metadata"].get("namespace") for d in docs} == {f"minillm-{overlay}"}
    errors = all_errors(docs)
    assert not errors, "\n".join(errors)


def test_prod_runs_the_cuda_image_on_a_gpu_with_the_scaling_the_plan_gives():
    docs = kustomize(DEPLOY / "overlays" / "prod")
    runtime = next(d for d in docs if d["kind"] == "ServingRuntime")
    container = runtime["spec"]["containers"][0]
    assert container["image"].endswith("-cuda")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    hpa_isvc = next(d for d in docs if d["metadata"]["name"] == "minillm-tiny")
    assert hpa_isvc["spec"]["predictor"]["maxReplicas"] == 8


def test_each_scaled_object_scales_an_inference_service_kserve_leaves_alone():
    scaled = [d for d in ALL_DOCS if d["kind"] == "ScaledObject"]
    assert scaled
    for so in scaled:
        name = so["spec"]["scaleTargetRef"]["name"].removesuffix("-predictor")
        isvc = next(d for d in ALL_DOCS if d["kind"] == "InferenceService"
                    and d["metadata"]["name"] == name)
        assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
        predictor = isvc["spec"]["predictor"]
        assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (
            predictor["minReplicas"], predictor["maxReplicas"])


def test_the_argocd_application_points_at_an_overlay_that_exists():
    app = documents(DEPLOY / "argocd" / "application.yaml")[0]
    path = app["spec"]["source"]["path"]
    assert path.startswith("deploy/overlays/") and (DEPLOY.parent / path).is_dir(), path
    assert app["spec"]["destination"]["namespace"] == f"minillm-{Path(path).name}"


def containerfile_command() -> tuple[list[str], list[str]]:
    text = (DEPLOY / "Containerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)[1])
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M)[1])
    return entrypoint, cmd


def test_the_containerfile_pins_torch_and_runs_a_command_line_that_parses():
    text = (DEPLOY / "Containerfile").read_text()
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+\n", text)
    assert '"torch==${TORCH_VERSION}"' in text and "whl/cpu" in text and "whl/cu" in text
    entrypoint, cmd = containerfile_command()
    assert entrypoint in MINILLM_COMMANDS, entrypoint
    assert not parse_errors(cmd, "Containerfile")


# -- broken copies must fail --------------------------------------------------------------------
def with_unknown_field(doc: dict) -> dict:
    broken = copy.deepcopy(doc)
    broken["spec"]["replicaz"] = 3  # a typo of a real field
    return broken


@pytest.mark.parametrize("index", range(len(ALL_DOCS)),
                         ids=[f"{d['kind']}-{d['metadata']['name']}" for d in ALL_DOCS])
def test_a_misspelt_field_fails(index):
    doc = ALL_DOCS[index]
    if "spec" not in doc:  # a ServiceAccount: nothing to misspell under spec
        broken = {**doc, "secretz": []}
    else:
        broken = with_unknown_field(doc)
    assert not schema_check(doc)
    assert schema_check(broken), f"{doc['kind']}: an unknown field passed"


@pytest.mark.parametrize("index", [i for i, d in enumerate(ALL_DOCS) if containers(d)],
                         ids=[f"{d['kind']}-{d['metadata']['name']}" for d in ALL_DOCS
                              if containers(d)])
def test_an_unknown_flag_or_a_misspelt_container_field_fails(index):
    broken = copy.deepcopy(ALL_DOCS[index])
    containers(broken)[0]["args"].append("--no-such-flag")
    assert command_line_errors([broken]), "an unknown flag passed"
    broken = copy.deepcopy(ALL_DOCS[index])
    containers(broken)[0]["readinesProbe"] = {"httpGet": {"path": "/health", "port": 8080}}
    assert schema_check(broken), "a misspelt container field passed"


@pytest.mark.parametrize("index", [i for i, d in enumerate(ALL_DOCS) if
                                   metric_errors([d])[1]])
def test_a_metric_that_does_not_exist_fails(index):
    text = yaml.safe_dump(ALL_DOCS[index])
    broken = yaml.safe_load(text.replace("vllm:num_requests_waiting", "vllm:num_requests_queued"))
    assert metric_errors([broken])[0], "a metric the server does not have passed"


def test_an_unknown_flag_in_an_inference_services_model_args_fails():
    runtime = next(d for d in ALL_DOCS if d["kind"] == "ServingRuntime")
    for isvc in [d for d in ALL_DOCS if d["kind"] == "InferenceService"]:
        assert not command_line_errors([runtime, isvc])
        broken = copy.deepcopy(isvc)
        broken["spec"]["predictor"]["model"]["args"] = ["--max-num-seqz=64"]
        assert command_line_errors([runtime, broken]), isvc["metadata"]["name"]


def test_a_probe_on_a_path_the_server_lacks_fails():
    runtime = copy.deepcopy(next(d for d in ALL_DOCS if d["kind"] == "ServingRuntime"))
    runtime["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/healthz"
    assert route_errors([runtime])


def test_the_containerfile_broken_fails():
    entrypoint, cmd = containerfile_command()
    assert parse_errors([*cmd, "--no-such-flag"], "Containerfile")


@pytest.mark.parametrize("breakage", ["missing resource", "patch of a missing path"])
def test_a_broken_overlay_fails_to_render(breakage, tmp_path):
    copied = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copied)
    kustomization = copied / "overlays" / "dev" / "kustomization.yaml"
    text = kustomization.read_text()
    if breakage == "missing resource":
        text = text.replace("  - ../../base", "  - ../../base\n  - ../../components/nothing-here")
    else:
        text = text.replace("/spec/predictor/maxReplicas", "/spec/predictor/maxReplicaz/0")
    kustomization.write_text(text)
    kustomize(DEPLOY / "overlays" / "dev")  # the original still renders
    with pytest.raises(AssertionError, match="kustomize build"):
        kustomize(copied / "overlays" / "dev")
