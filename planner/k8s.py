"""KubeRay manifests from the templates in `deploy/k8s/base` (DESIGN.md section 7).

- `render(dir)`: builds a kustomization directory the way `kustomize build` does for the subset the
  templates use (`resources` files and directories, strategic-merge `patches` by kind and name,
  `namespace`). Anything else in a kustomization.yaml is refused, so the two never disagree.
- `overlay_patches(plan)`: the RayService and RayJob patches for a plan's oscar-int2 shape: the
  Serve config (the same `serve_config` as `--emit serve-config`), GPU worker groups sized to TP,
  replicas for autoscaling, node selector, calibration entrypoint.
- `emit_manifest(kind, plan, out)` (`oscar-plan --emit rayservice|rayjob`) and `write_overlay`
  (the committed overlays under deploy/k8s/overlays) both render the same templates + patches.
- `check_hygiene(docs)`: non-root, no privilege escalation, GPU requests = limits, secrets only by
  secretKeyRef, probes on serving containers, string `rayStartParams`, Serve config content valid.
- `validate_against_crds(doc, crd_dir)`: jsonschema on the KubeRay v1 CRD's openAPIV3Schema.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from oscar_cluster.errors import ConfigError

from .emit import check_serve_config, serve_config, validate_with_ray, write_atomic
from .plan import Plan
from .specs import KVFormat

__all__ = ["templates_dir", "render", "dump", "build", "overlay_patches", "emit_manifest", "write_overlay", "check_hygiene",
           "validate_against_crds", "merge"]

_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "patches", "namespace"}
NODE_PRODUCT = {"H100-SXM-80GB": "NVIDIA-H100-80GB-HBM3", "H200-SXM-141GB": "NVIDIA-H200",
                "A100-SXM-80GB": "NVIDIA-A100-SXM4-80GB", "L40S-48GB": "NVIDIA-L40S", "B200-192GB": "NVIDIA-B200"}
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|CREDENTIAL", re.I)


def templates_dir() -> Path:
    """deploy/k8s/base as installed (package data of oscar_cluster.deploy)."""
    return Path(str(resources.files("oscar_cluster.deploy") / "k8s" / "base"))


# ---- a kustomize subset -----------------------------------------------------------------------

def merge(base: Any, patch: Any) -> Any:
    """Strategic merge: mappings merge key by key, lists of named mappings merge by `name` (or
    `groupName`), other lists and scalars are replaced; a None value deletes the key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = next((k for k in ("name", "groupName") if all(isinstance(x, dict) and k in x for x in base + patch)), None)
        if key is None:
            return copy.deepcopy(patch)
        out = [copy.deepcopy(x) for x in base]
        index = {x[key]: i for i, x in enumerate(out)}
        for x in patch:
            if x[key] in index:
                out[index[x[key]]] = merge(out[index[x[key]]], x)
            else:
                out.append(copy.deepcopy(x))
        return out
    return copy.deepcopy(patch)


def _docs(path: Path) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def render(directory: str | Path) -> list[dict]:
    """The manifests a kustomization directory builds to (see module docstring)."""
    d = Path(directory)
    kfile = d / "kustomization.yaml"
    if not kfile.is_file():
        raise ConfigError(f"{d}: no kustomization.yaml")
    (k,) = _docs(kfile) or [{}]
    extra = set(k) - _KUSTOMIZE_KEYS
    if extra:
        raise ConfigError(f"{kfile}: fields {sorted(extra)} are outside the subset this renderer implements "
                          f"({', '.join(sorted(_KUSTOMIZE_KEYS))}); build with kustomize instead")
    out: list[dict] = []
    for res in k.get("resources", []):
        p = (d / res).resolve()
        out += render(p) if p.is_dir() else _docs(p)
    for patch in k.get("patches", []):
        if not isinstance(patch, dict) or set(patch) != {"path"}:
            raise ConfigError(f"{kfile}: patches entries must be {{path: FILE}} (strategic merge by kind and name)")
        for pdoc in _docs(d / patch["path"]):
            kind, name = pdoc.get("kind"), pdoc.get("metadata", {}).get("name")
            hits = [i for i, x in enumerate(out) if x.get("kind") == kind and x.get("metadata", {}).get("name") == name]
            if len(hits) != 1:
                raise ConfigError(f"{d / patch['path']}: patch for {kind}/{name} matches {len(hits)} resources")
            out[hits[0]] = merge(out[hits[0]], pdoc)
    if "namespace" in k:
        for x in out:
            x.setdefault("metadata", {})["namespace"] = k["namespace"]
    return out


# ---- patches from a plan -----------------------------------------------------------------------

class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as literal blocks: readable and diffable."""


_BlockDumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s,
                                                                  style="|" if "\n" in s else None))


def dump(docs: list[dict] | dict) -> str:
    docs = docs if isinstance(docs, list) else [docs]
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40]


def overlay_patches(p: Plan, image: str = "ghcr.io/oscar-cluster/oscar-serve:0.1.0") -> dict[str, dict]:
    """{"rayservice": patch, "rayjob": patch} for plan `p`'s oscar-int2 shape."""
    r = p.request
    o = p.option(KVFormat.OSCAR_INT2)
    s = o.shape
    if s is None or not o.fits:
        raise ConfigError(f"no oscar-int2 shape fits for {r.model.name} at ctx {r.ctx} on {r.gpu.name}; nothing to emit")
    slug = _slug(r.model.name)
    cfg = serve_config(p)
    llm = cfg["applications"][0]["args"]["llm_configs"][0]
    llm["runtime_env"]["env_vars"]["OSCAR_ARTIFACT"] = f"/artifacts/{slug}"
    check_serve_config(cfg)
    gpus_per_pod = s.tp  # one serve replica's TP group on one node (STRICT_PACK); PP stages are extra pods
    pods_per_replica = s.pp
    product = NODE_PRODUCT.get(r.gpu.name)
    node = {"nodeSelector": {"nvidia.com/gpu.product": product}} if product else {"nodeSelector": None}
    res = {"cpu": str(8 * gpus_per_pod), "memory": f"{64 * gpus_per_pod}Gi", "nvidia.com/gpu": str(gpus_per_pod)}

    def worker(component: str, replicas: int, lo: int, hi: int, container: str) -> dict:
        return {"groupName": "gpu", "replicas": replicas, "minReplicas": lo, "maxReplicas": hi,
                "rayStartParams": {"num-gpus": str(gpus_per_pod)},
                "template": {"spec": {**node, "containers": [{"name": container, "image": image,
                                                              "resources": {"requests": res, "limits": res}}]}}}

    head_image = {"template": {"spec": {"containers": [{"name": "ray-head", "image": image}]}}}
    rayservice = {
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "oscar-serve"},
        "spec": {"serveConfigV2": yaml.safe_dump(cfg, sort_keys=False),
                 "rayClusterConfig": {
                     "headGroupSpec": head_image,
                     "workerGroupSpecs": [worker("ray-worker", s.replicas * pods_per_replica, pods_per_replica,
                                                 s.replicas * pods_per_replica, "ray-worker")]}}}
    model_dir = f"/models/{r.model.name}"
    rayjob = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "oscar-calibrate"},
        "spec": {"entrypoint": f"oscar-calibrate --model {model_dir} --out /artifacts/{slug} --address auto "
                               f"--num-gpus {gpus_per_pod} --target-context {r.ctx}",
                 "rayClusterSpec": {"headGroupSpec": head_image,
                                    "workerGroupSpecs": [worker("ray-worker", 1, 1, 1, "ray-worker")]}}}
    return {"rayservice": rayservice, "rayjob": rayjob}


def _base(kind: str) -> Path:
    return templates_dir() / ("serve" if kind == "rayservice" else "calibrate")


def build(kind: str, p: Plan, image: str | None = None) -> list[dict]:
    """Render the base for `kind` with the plan's patch applied (what an overlay builds to)."""
    docs = render(_base(kind))
    patch = overlay_patches(p, **({"image": image} if image else {}))[kind]
    hit = [i for i, x in enumerate(docs) if x["kind"] == patch["kind"]]
    docs[hit[0]] = merge(docs[hit[0]], patch)
    check_hygiene(docs)
    return docs


def emit_manifest(kind: str, p: Plan, out_dir: str | Path, command: str = "oscar-plan") -> tuple[Path, str]:
    docs = build(kind, p)
    r, s = p.request, p.option(KVFormat.OSCAR_INT2).shape
    head = (f"# KubeRay {kind} written by: {command}\n# plan: {r.model.name}, ctx {r.ctx} x batch {r.batch}, oscar-int2 KV: "
            f"TP {s.tp} x PP {s.pp} x {s.replicas} replica(s) = {s.gpus} x {r.gpu.name}\n"
            f"# apply: kubectl apply -f {kind}.yaml   (KubeRay operator v1.x installed; see deploy/k8s/README.md)\n")
    path = Path(out_dir) / f"{kind}.yaml"
    write_atomic(path, head + dump(docs))
    how = "rendered from deploy/k8s/base; hygiene and Serve config checked"
    return path, how


def write_overlay(p: Plan, out_dir: str | Path, base_rel: str = "../../base", command: str = "oscar-plan") -> list[Path]:
    """A kustomize overlay (kustomization.yaml + two patches) for plan `p`."""
    d = Path(out_dir)
    patches = overlay_patches(p)
    written = []
    for kind, patch in patches.items():
        path = d / f"patch-{kind}.yaml"
        write_atomic(path, dump(patch))
        written.append(path)
    kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"{base_rel}/serve", f"{base_rel}/calibrate"],
            "patches": [{"path": "patch-rayservice.yaml"}, {"path": "patch-rayjob.yaml"}]}
    r = p.request
    head = (f"# {r.model.name}, OSCAR INT2, ctx {r.ctx}, batch {r.batch}, on {r.gpu.name}\n"
            f"# generated by: {command}\n# build: kustomize build . | kubectl apply -f -\n")
    path = d / "kustomization.yaml"
    write_atomic(path, head + yaml.safe_dump(kust, sort_keys=False))
    return [path, *written]


# ---- checks -------------------------------------------------------------------------------------

def _pod_templates(doc: dict) -> list[tuple[str, dict, dict]]:
    """(where, group spec, pod spec) for every Ray group in a RayService/RayJob/RayCluster."""
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or (spec if doc.get("kind") == "RayCluster" else {})
    out = []
    head = cluster.get("headGroupSpec")
    if head:
        out.append(("headGroupSpec", head, head.get("template", {}).get("spec", {})))
    for i, w in enumerate(cluster.get("workerGroupSpecs", [])):
        out.append((f"workerGroupSpecs[{i}]", w, w.get("template", {}).get("spec", {})))
    return out


def check_hygiene(docs: list[dict]) -> None:
    """Production rules every rendered manifest must keep; raises ConfigError naming the place."""
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for where, group, pod in _pod_templates(doc):
            for k, v in (group.get("rayStartParams") or {}).items():
                if not isinstance(v, str):
                    raise ConfigError(f"{name} {where}.rayStartParams.{k}: must be a string, got {v!r}")
            psc = pod.get("securityContext", {})
            for c in pod.get("containers", []):
                at = f"{name} {where} container {c.get('name')}"
                sc = c.get("securityContext", {})
                if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) and sc.get("runAsUser", psc.get("runAsUser", 0)) != 0):
                    raise ConfigError(f"{at}: must run as a non-root user (runAsNonRoot, runAsUser != 0)")
                if sc.get("allowPrivilegeEscalation", True) or sc.get("privileged"):
                    raise ConfigError(f"{at}: allowPrivilegeEscalation must be false (and not privileged)")
                req = c.get("resources", {}).get("requests", {})
                lim = c.get("resources", {}).get("limits", {})
                if ("nvidia.com/gpu" in req or "nvidia.com/gpu" in lim) and req.get("nvidia.com/gpu") != lim.get("nvidia.com/gpu"):
                    raise ConfigError(f"{at}: nvidia.com/gpu requests {req.get('nvidia.com/gpu')!r} must equal limits "
                                      f"{lim.get('nvidia.com/gpu')!r}")
                gpus = (group.get("rayStartParams") or {}).get("num-gpus")
                if gpus not in (None, "0") and lim.get("nvidia.com/gpu") != gpus:
                    raise ConfigError(f"{at}: rayStartParams num-gpus {gpus} but nvidia.com/gpu limit "
                                      f"{lim.get('nvidia.com/gpu')!r}; set both (requests = limits)")
                for e in c.get("env", []):
                    if _SECRET_NAME.search(e.get("name", "")) and "value" in e:
                        raise ConfigError(f"{at}: env {e['name']} looks like a credential; pass it with "
                                          "valueFrom.secretKeyRef, never a literal value")
                if doc.get("kind") == "RayService" and where == "headGroupSpec" and not c.get("readinessProbe"):
                    raise ConfigError(f"{at}: the serving head needs a readinessProbe")
        if doc.get("kind") == "RayService":
            try:
                cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
            except (KeyError, yaml.YAMLError) as e:
                raise ConfigError(f"{name}: spec.serveConfigV2 missing or not YAML ({e})") from None
            check_serve_config(cfg)
            try:
                validate_with_ray(cfg)
            except ConfigError as e:
                if "needs Ray" not in str(e):
                    raise
        if doc.get("kind") == "NetworkPolicy":
            ports = {p.get("port") for rule in doc["spec"].get("ingress", []) for p in rule.get("ports", [])}
            if ports - {8000, 8080}:
                raise ConfigError(f"{name}: ingress admits ports {sorted(ports)}; only 8000 (Serve) and 8080 (metrics)")


def validate_against_crds(doc: dict, crd_dir: str | Path) -> None:
    """jsonschema validation of a ray.io/v1 resource against its CRD's openAPIV3Schema."""
    import jsonschema

    kind = doc.get("kind")
    files = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayCluster": "ray.io_rayclusters.yaml"}
    if kind not in files:
        raise ConfigError(f"{kind}: not a KubeRay kind")
    crd = yaml.safe_load((Path(crd_dir) / files[kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise ConfigError(f"{kind}/{doc['metadata'].get('name')}: {'.'.join(map(str, e.path))}: {e.message} "
                          f"({len(errors)} error(s) against the KubeRay v1 CRD)")
