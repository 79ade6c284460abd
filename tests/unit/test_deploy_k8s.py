"""deploy/k8s: the pilot-park overlay renders with ``kubectl kustomize`` and what it
renders holds together.

``deploy/k8s/render`` runs ``kubectl kustomize`` where kubectl is installed, else
kustomize v5.5.0 (the version kubectl 1.32 embeds) built once from the Go module
proxy; it never skips. The rendered objects are checked for what the cluster would
only say at run time: every ConfigMap a pod names is rendered, every Secret key it
names is one of deploy/k8s/secrets.env.example's (the Secret is made from that
file), one pinned image, real ``smartpark`` sub-commands and settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from rules.pack import load_pack
from smartpark.cli import COMMANDS
from tests.unit.test_deploy import setting_exists

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAY = K8S / "overlays" / "pilot-park"
IMAGE = "registry.park.example/smartpark:0.1.0"
CONSUMERS = ("smartpark-sink", "smartpark-rules", "smartpark-notifier")


def render(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(K8S / "render"), str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    return tuple(render(OVERLAY))


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered() if o["kind"] == kind}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        spec: dict[str, Any] = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = obj["spec"]["template"]["spec"]
    return spec


def workloads() -> list[dict[str, Any]]:
    return [o for o in rendered() if o["kind"] in ("Deployment", "Job", "CronJob")]


def secret_keys() -> set[str]:
    lines = (K8S / "secrets.env.example").read_text().splitlines()
    return {ln.split("=", 1)[0] for ln in lines if ln and not ln.startswith("#")}


def test_the_overlay_renders_every_service() -> None:
    deployments = objects("Deployment")
    assert set(deployments) == {
        "smartpark-bridge", *CONSUMERS, "smartpark-api",
    }  # fmt: skip
    assert set(objects("Job")) == {"smartpark-migrate"}
    assert set(objects("CronJob")) == {
        "smartpark-db-maintain", "smartpark-archive-seal", "smartpark-archive-retain",
    }  # fmt: skip
    assert set(objects("Service")) == {"smartpark-api"}
    assert {o["metadata"].get("namespace") for o in rendered()} - {None} == {
        "smartpark"
    }


def test_a_broken_kustomization_fails_to_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    done = subprocess.run(
        [str(K8S / "render"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "missing.yaml" in done.stderr


def test_pods_name_only_rendered_config_maps_and_known_secret_keys() -> None:
    config_maps = set(objects("ConfigMap"))
    claims = set(objects("PersistentVolumeClaim"))
    keys = secret_keys()
    for obj in workloads():
        spec = pod_spec(obj)
        where = obj["metadata"]["name"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, where
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
            assert "secret" not in volume, where
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                assert "secretRef" not in src, f"{where}: every secret, not its own"
                assert src["configMapRef"]["name"] in config_maps, where
            for env in c.get("env", []):
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "smartpark-secrets", where
                assert ref["key"] in keys, f"{where}: {ref['key']}"
                assert env["name"] == ref["key"], where


def test_one_pinned_image_running_real_commands_as_non_root() -> None:
    for obj in workloads():
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            assert c["image"] == IMAGE, obj["metadata"]["name"]
            assert c["args"][0] in COMMANDS, c["args"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["resources"]["limits"]["memory"], obj["metadata"]["name"]


def test_every_setting_named_is_a_setting() -> None:
    names = set(secret_keys())
    for cm in objects("ConfigMap").values():
        names |= {k for k in cm["data"] if k.startswith("SMARTPARK_")}
    assert "SMARTPARK_KAFKA__PARTITIONS" in names
    for name in names:
        assert setting_exists(name), name


def test_consumers_are_groups_within_the_partitions() -> None:
    (config,) = [
        cm for n, cm in objects("ConfigMap").items() if n.startswith("smartpark-config")
    ]
    partitions = int(config["data"]["SMARTPARK_KAFKA__PARTITIONS"])
    deployments = objects("Deployment")
    for name in CONSUMERS:
        assert 1 < deployments[name]["spec"]["replicas"] <= partitions, name
    bridge = deployments["smartpark-bridge"]["spec"]
    assert bridge["replicas"] == 1
    assert bridge["strategy"] == {"type": "Recreate"}


def test_probes_and_disruption_budgets() -> None:
    deployments = objects("Deployment")
    for name, d in deployments.items():
        (c,) = pod_spec(d)["containers"]
        assert "livenessProbe" in c, name
        probe = c["livenessProbe"]
        if name == "smartpark-api":
            assert probe["httpGet"]["path"] == "/health"
            assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
        else:
            assert probe["exec"]["command"][:2] == [
                "smartpark-healthcheck",
                "connected",
            ]
    budgets = objects("PodDisruptionBudget")
    for budget in budgets.values():
        labels = budget["spec"]["selector"]["matchLabels"]
        (target,) = [
            d for d in deployments.values()
            if labels.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert target["spec"]["replicas"] > 1, budget["metadata"]["name"]
    assert {b["metadata"]["name"] for b in budgets.values()} == {
        *CONSUMERS, "smartpark-api",
    }  # fmt: skip


def test_the_overlays_rule_pack_loads() -> None:
    (rules_cm,) = [
        cm for n, cm in objects("ConfigMap").items() if n.startswith("smartpark-rules")
    ]
    assert "rules.yaml" in rules_cm["data"]
    pack = load_pack(OVERLAY / "rules.yaml")
    assert pack.rules


def test_every_object_has_its_upgrade_step() -> None:
    """deploy/README.md, "Upgrades": applied step by step with
    ``kubectl apply -f release.yaml -l smartpark.io/upgrade-step=N-...``."""
    steps = {}
    for o in rendered():
        name = o["metadata"]["name"]
        if o["kind"] == "ConfigMap":  # without its hash
            name = name.rsplit("-", 1)[0]
        steps[o["kind"], name] = o["metadata"]["labels"]["smartpark.io/upgrade-step"]
    assert steps[("Job", "smartpark-migrate")] == "2-migrate"
    assert steps[("Deployment", "smartpark-bridge")] == "4-bridge"
    for name in (*CONSUMERS, "smartpark-api"):
        assert steps[("Deployment", name)] == "3-consumers"
    for kind in ("ConfigMap", "Namespace", "PersistentVolumeClaim"):
        assert {s for (k, _), s in steps.items() if k == kind} == {"1-config"}
    assert set(steps.values()) == {"1-config", "2-migrate", "3-consumers", "4-bridge"}


def test_render_without_kubectl_builds_kustomize_and_renders_the_same(
    tmp_path: Path,
) -> None:
    """A machine without kubectl (a fresh CI machine): ``render`` builds kustomize
    from the Go module proxy once (into ``.services/bin``) and renders the same
    objects; where kubectl is installed, byte for byte what it renders."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "dirname", "mkdir", "mktemp", "mv", "rmdir", "go"):
        found = shutil.which(tool) or ("/usr/local/go/bin/go" if tool == "go" else None)
        assert found is not None, f"{tool} is not installed"
        (tools / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(tools)}
    done = subprocess.run(
        [str(K8S / "render"), str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert [d for d in yaml.safe_load_all(done.stdout) if d] == list(rendered())
    if shutil.which("kubectl"):
        kubectl = subprocess.run(
            ["kubectl", "kustomize", str(OVERLAY)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout == kubectl.stdout
