"""deploy/: the compose stack against the Compose specification's schema, the
commands and settings it names, the image build file, the health check script.

The schema is vendored (tests/fixtures/compose_spec.json: ``compose/config/
compose_spec.json`` of the PyPI package docker-compose 1.29.2, the Compose
Specification's JSON schema as that release shipped it, draft 2019-09). Compose
parses the YAML, interpolates ``${VAR}`` in its strings, then validates; the file
is checked the same way, with the values of .env.example and made-up secrets.
"""

from __future__ import annotations

import http.server
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from smartpark.cli import COMMANDS
from smartpark.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
ENV_EXAMPLE = REPO / "deploy" / "compose" / ".env.example"
CONTAINERFILE = REPO / "deploy" / "Containerfile"
SCHEMA = REPO / "tests" / "fixtures" / "compose_spec.json"
LOCAL_SERVICES = REPO / "deploy" / "local" / "services"
MOSQUITTO_CONF = REPO / "deploy" / "compose" / "mosquitto" / "mosquitto.conf"

# Started by `up` and kept running: each needs a health check, a restart policy
# and limits. The one-shot steps and the cron jobs are the others.
ONE_SHOT = {"migrate", "mqtt-files", "db-maintain", "archive-seal", "archive-retain"}
PLATFORM_IMAGE = "smartpark:0.1.0"  # SMARTPARK_IMAGE in .env.example

_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


# ---------------------------------------------------------------- helpers
def env_example() -> dict[str, str]:
    """The variables of .env.example, with a made-up value for each empty secret."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``${V}``, ``${V:-default}``, ``${V-default}``,
    ``${V:?error}``, ``${V?error}`` and ``$$``; a required one unset raises."""

    def sub(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        name, op, arg = m[1], m[2], m[3]
        value = env.get(name)
        empty = value is None or (op is not None and op.startswith(":") and not value)
        if op in (":?", "?") and empty:
            raise ValueError(f"required variable {name} unset: {arg}")
        if op in (":-", "-") and empty:
            return arg
        return value or ""

    return _VAR.sub(sub, text)


def variables(text: str) -> set[str]:
    return {m[1] for m in _VAR.finditer(text) if m[1]}


def filled_env() -> dict[str, str]:
    env = env_example()
    return {k: v or f"made-up-{k.lower()}" for k, v in env.items()}


def _interpolate_values(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolate_values(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_values(v, env) for v in node]
    return node


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as Compose sees it: parsed, then each string interpolated."""
    doc: dict[str, Any] = _interpolate_values(
        yaml.safe_load(COMPOSE.read_text()), filled_env() if env is None else env
    )
    return doc


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    # Its $schema ends in "#", which jsonschema does not recognise: name the draft.
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    return jsonschema.Draft201909Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator().iter_errors(doc)
    ]


def platform_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in doc["services"].items() if s.get("image") == PLATFORM_IMAGE
    }


# ---------------------------------------------------------------- compose
def test_compose_validates_against_the_compose_schema() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_rejects_a_wrong_file() -> None:
    doc = compose()
    doc["services"]["sink"]["restart_policy"] = "always"  # not a Compose key
    doc["services"]["api"]["depends_on"]["migrate"]["condition"] = "done"
    doc["services"]["kafka"]["healthcheck"]["interval"] = 30  # must be a duration
    errors = schema_errors(doc)
    assert any(e.startswith("services/sink:") for e in errors), errors
    assert any(e.startswith("services/api/depends_on") for e in errors), errors
    assert any(e.startswith("services/kafka/healthcheck/interval") for e in errors)


def test_every_variable_is_in_env_example_and_no_secret_is_filled_in() -> None:
    env = env_example()
    used = variables(COMPOSE.read_text())
    assert used - env.keys() == set(), "used in compose.yaml, missing in .env.example"
    assert env.keys() - used == set(), "in .env.example, used nowhere"
    secrets = {k for k in env if re.search("PASSWORD|SECRET|PEPPER|PRIVATE", k)}
    assert secrets >= {"POSTGRES_PASSWORD", "API_KEY_PEPPER", "SIGNING_PRIVATE_KEY"}
    for name in secrets:
        assert env[name] in ("", "[]"), f"{name} has a value in .env.example"


def test_a_missing_secret_stops_compose_naming_it() -> None:
    env = filled_env()
    del env["API_KEY_PEPPER"]
    with pytest.raises(ValueError, match="API_KEY_PEPPER"):
        compose(env)


def test_every_service_command_is_a_smartpark_command() -> None:
    services = platform_services(compose())
    assert set(services) >= {"migrate", "bridge", "sink", "rules", "notifier", "api"}
    assert "upstream" in services
    assert services["upstream"]["profiles"] == ["upstream"]
    for name, svc in services.items():
        assert svc["command"][0] in COMMANDS, f"{name}: {svc['command']}"
    assert services["migrate"]["command"] == ["db", "migrate"]


def setting_exists(var: str) -> bool:
    """Whether ``SMARTPARK_SECTION__NAME`` (or ``SMARTPARK_NAME``) is a setting."""
    path = var.removeprefix("SMARTPARK_").lower().split("__")
    fields = Settings.model_fields
    for i, part in enumerate(path):
        names = {f.alias or n: f for n, f in fields.items()}
        if part not in names:
            return False
        annotation = names[part].annotation
        if i < len(path) - 1:
            fields = getattr(annotation, "model_fields", None) or {}
    return True


def test_setting_check_knows_a_wrong_name() -> None:
    assert setting_exists("SMARTPARK_DATABASE__DSN")
    assert setting_exists("SMARTPARK_DATABASE__SCHEMA")  # an alias
    assert setting_exists("SMARTPARK_LOG_LEVEL")
    assert not setting_exists("SMARTPARK_DATABASE__URL")
    assert not setting_exists("SMARTPARK_KAFKA__BOOTSTRAP__X")


def test_every_smartpark_variable_is_a_setting() -> None:
    doc = compose()
    seen = set()
    for name, svc in platform_services(doc).items():
        for var in svc.get("environment", {}):
            if var.startswith("SMARTPARK_"):
                seen.add(var)
                assert setting_exists(var), f"{name}: {var} is not in Settings"
    assert {"SMARTPARK_DATABASE__DSN", "SMARTPARK_MQTT__PASSWORD"} <= seen


def test_each_service_gets_only_the_secrets_it_needs() -> None:
    services = platform_services(compose())
    pepper = {
        n
        for n, s in services.items()
        if "SMARTPARK_API__KEY_PEPPER" in s["environment"]
    }
    signing = {
        n
        for n, s in services.items()
        if "SMARTPARK_SIGNING__PRIVATE_KEY" in s["environment"]
    }
    mqtt = {
        n for n, s in services.items() if "SMARTPARK_MQTT__PASSWORD" in s["environment"]
    }
    dsn = {
        n for n, s in services.items() if "SMARTPARK_DATABASE__DSN" in s["environment"]
    }
    assert pepper == {"api"}
    assert signing == {"api", "archive-seal", "archive-retain"}
    assert mqtt == {"bridge"}
    assert "bridge" not in dsn


def test_long_running_services_have_health_checks_restarts_and_limits() -> None:
    doc = compose()
    running = {n: s for n, s in doc["services"].items() if n not in ONE_SHOT}
    assert set(running) >= {"mosquitto", "kafka", "timescaledb", "grafana", "bridge"}
    for name, svc in running.items():
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert not {"true", "exit 0", "/bin/true"} & {" ".join(test[1:]).strip()}, name
        assert svc["restart"] == "unless-stopped", name
        assert svc["deploy"]["resources"]["limits"]["memory"], name
    for name in ONE_SHOT:
        assert doc["services"][name]["restart"] == "no", name


def test_services_start_after_the_migration_and_their_brokers() -> None:
    doc = compose()["services"]
    for name in ("sink", "rules", "notifier", "api", "upstream"):
        assert doc[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert doc[name]["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert doc["bridge"]["depends_on"]["mosquitto"] == {"condition": "service_healthy"}
    assert doc["mosquitto"]["depends_on"]["mqtt-files"] == {
        "condition": "service_completed_successfully"
    }
    assert doc["migrate"]["depends_on"]["timescaledb"] == {
        "condition": "service_healthy"
    }


def test_images_are_pinned() -> None:
    for name, svc in compose()["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: {image}"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned"


def test_kafka_does_not_create_topics_the_platform_did_not_ask_for() -> None:
    env = compose()["services"]["kafka"]["environment"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    platform = compose()["services"]["sink"]["environment"]
    assert env["KAFKA_NUM_PARTITIONS"] == platform["SMARTPARK_KAFKA__PARTITIONS"]


def _local_max_packet_size() -> str:
    m = re.search(r"^max_packet_size (\d+)$", LOCAL_SERVICES.read_text(), re.M)
    assert m is not None
    return m[1]


def test_mosquitto_conf_binds_client_ids_and_caps_messages() -> None:
    lines = [
        line.strip()
        for line in MOSQUITTO_CONF.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "per_listener_settings false" in lines
    assert "persistence true" in lines
    assert f"max_packet_size {_local_max_packet_size()}" in lines
    listeners = [i for i, line in enumerate(lines) if line.startswith("listener ")]
    assert len(listeners) == 2
    for i in listeners:  # the listener's own settings follow it
        block = lines[i + 1 : next((j for j in listeners if j > i), len(lines))]
        assert "use_username_as_clientid true" in block, lines[i]
    assert "include_dir /mosquitto/config/smartpark" in lines
    mounts = compose()["services"]["mosquitto"]["volumes"]
    assert "./mosquitto/accounts:/mosquitto/config/smartpark:ro" in mounts
    files = compose()["services"]["mqtt-files"]
    assert files["command"][-1] == "/mosquitto/config/smartpark"  # --broker-dir
    assert files["user"] == "1883:1883"  # Mosquitto's uid reads the 0600 passwd


# ---------------------------------------------------------------- Containerfile
def _parser() -> DockerfileParser:
    return DockerfileParser(fileobj=io.StringIO(CONTAINERFILE.read_text()))


def _stages() -> dict[str, list[dict[str, Any]]]:
    stages: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for instruction in _parser().structure:
        ins: dict[str, Any] = dict(instruction)
        if ins["instruction"] == "FROM":
            name = ins["value"].split()[-1]
            current = stages.setdefault(name, [])
        current.append(ins)
    return stages


def test_containerfile_builds_a_wheel_and_runs_as_non_root() -> None:
    parser = _parser()
    stages = _stages()
    assert list(stages) == ["build", "runtime"]
    assert parser.baseimage == "python:3.11.11-slim-bookworm"
    args = [i["value"] for i in parser.structure if i["instruction"] == "ARG"]
    assert args == ["PYTHON_IMAGE=python:3.11.11-slim-bookworm"]  # both stages' base
    runs = [i["value"] for i in stages["build"] if i["instruction"] == "RUN"]
    assert "python -m pip wheel --no-deps --wheel-dir /wheels ." in runs
    runtime = stages["runtime"]
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    installed = " ".join(i["value"] for i in runtime if i["instruction"] == "RUN")
    assert "--no-index" in installed
    assert '"smartpark[platform]"' in installed
    assert "pip uninstall --yes pip" in installed  # no package manager left
    assert json.loads(parser.structure[-2]["value"]) == ["smartpark"]  # ENTRYPOINT
    assert parser.structure[-2]["instruction"] == "ENTRYPOINT"


def test_containerfile_copies_every_package_of_pyproject() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = {
        i["value"].split()[0].rstrip("/")
        for i in _stages()["build"]
        if i["instruction"] == "COPY"
    }
    assert packages - copied == set(), "packages the image would leave out"
    for package in packages:
        assert (REPO / package / "__init__.py").exists(), package


# ---------------------------------------------------------------- health check
def _healthcheck() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "deploy_healthcheck", REPO / "deploy" / "healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_connected_sees_an_established_connection_and_its_loss() -> None:
    hc = _healthcheck()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert hc.main(["connected", str(port)]) == 1  # listening is not connected
        client = socket.create_connection(("127.0.0.1", port))
        peer, _ = server.accept()
        assert hc.main(["connected", str(port)]) == 0
        assert hc.check_connected([port, 1]) == "no established connection to port 1"
        client.close()
        peer.close()
    assert port not in hc.established_remote_ports()
    assert hc.main(["connected", "kafka"]) == 2


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ready" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_check_wants_200(http_server: str) -> None:
    hc = _healthcheck()
    assert hc.main(["http", f"{http_server}/ready"]) == 0
    assert (
        hc.check_http(f"{http_server}/health") == f"GET {http_server}/health: HTTP 503"
    )
    assert hc.main(["http", "file:///etc/passwd"]) == 1


def test_grafana_reads_what_the_export_writes() -> None:
    from api.grafana.export import CONTAINER_DASHBOARDS

    grafana = compose()["services"]["grafana"]
    assert f"./grafana/dashboards:{CONTAINER_DASHBOARDS}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert grafana["env_file"] == "./grafana/grafana.env"
