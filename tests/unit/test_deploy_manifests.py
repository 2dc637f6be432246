"""Static checks of docker-compose.yml, the Dockerfiles and the Kubernetes manifests against the code.

Nothing here needs a Docker engine or a cluster: the files are parsed, and checked against the settings classes
(ports, `SHELFCAST_*` names), the `shelfcast` command (subcommands and their options) and the repository (build
contexts, Dockerfiles, mounted files). Each checker returns a list of problems; the tests at the end run every
checker on a deliberately broken copy to show that it can fail.
"""

import copy
import importlib
import importlib.util
import inspect
import json
import re
import shlex
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = "docker-compose.yml"
K8S_DIRS = ("deploy/k8s", "deploy/flink")
PROMETHEUS_CONFIG = "deploy/prometheus/prometheus.yml"
# The settings modules whose BaseSettings classes define every SHELFCAST_* name; and the code that may read a few
# more straight from the environment (os.environ / typer envvar=), scanned for them.
SETTINGS_MODULES = (
    "shelfcast.settings",
    "shelfcast_ingest.settings",
    "shelfcast_features.settings",
    "shelfcast_forecaster.settings",
    "shelfcast_agent.settings",
)
SOURCE_DIRS = ("src", "services", "flink_jobs")
# Images pulled rather than built here (repository names; each use must pin a tag other than `latest`).
UPSTREAM_IMAGES = frozenset(
    {
        "apache/kafka",
        "redis",
        "prom/prometheus",
        "grafana/grafana",
        "python",
        "flink",
        "eclipse-temurin",
        "nvidia/cuda",
        "ghcr.io/astral-sh/uv",
    }
)
FLINK_REST_PORT = 8081  # Flink's own (the JobManager's REST API and UI), not a Shelfcast setting
# Files the operator creates before `docker compose up` (never committed): they need not exist here.
OPERATOR_PROVIDED = frozenset(
    {"secrets/api_keys", "secrets/read_api_keys", "secrets/redis_password", "secrets/grafana_admin_password"}
)
# Manifests in deploy/k8s that kustomization.yaml must not list.
NOT_RESOURCES = frozenset({"kustomization.yaml", "kustomizeconfig.yaml"})

ENV_NAME = re.compile(r"\bSHELFCAST_[A-Z0-9_]*[A-Z0-9]\b")
LOCAL_URL = re.compile(r"https?://(?:127\.0\.0\.1|localhost):(\d+)")


# ---------------------------------------------------------------------------------------------------- loading


def load_compose(root: Path = ROOT) -> dict[str, Any]:
    return yaml.safe_load((root / COMPOSE_FILE).read_text())


def load_manifests(root: Path = ROOT) -> dict[str, list[dict[str, Any]]]:
    """Relative path -> the YAML documents of every deploy/k8s/*.yaml and deploy/flink/*.yaml."""
    manifests = {}
    for folder in K8S_DIRS:
        for path in sorted((root / folder).glob("*.yaml")):
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            manifests[str(path.relative_to(root))] = docs
    return manifests


def load_dockerfiles(root: Path = ROOT) -> dict[str, str]:
    paths = [*sorted(root.glob("services/*/Dockerfile*")), root / "flink_jobs" / "Dockerfile"]
    return {str(p.relative_to(root)): p.read_text() for p in paths if p.is_file()}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(arguments: str) -> list[str]:
    """A CMD / ENTRYPOINT / HEALTHCHECK CMD argument as argv (JSON exec form, else shell words)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return shlex.split(arguments)
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(arguments)


def image_repo(ref: str) -> str:
    """'ghcr.io/astral-sh/uv:0.8' -> 'ghcr.io/astral-sh/uv'; 'redis:7.4' -> 'redis'."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref[: len(ref) - len(last)] + last.split(":", 1)[0]


def image_tag(ref: str) -> str | None:
    last = ref.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def component_of_dockerfile(path: str) -> str | None:
    """services/ingest/Dockerfile -> ingest; flink_jobs/Dockerfile -> features; anything else: None."""
    parts = Path(path).parts
    if len(parts) == 3 and parts[0] == "services" and parts[1] in component_ports():
        return parts[1]
    if parts[:1] == ("flink_jobs",):
        return "features"
    return None


def compose_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose.get("services") or {}


def compose_build(service: dict[str, Any]) -> tuple[str, str] | None:
    """(context, dockerfile relative to the repository root) of a service that builds its image."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return build, str(Path(build) / "Dockerfile")
    context = build.get("context", ".")
    return context, str(Path(context) / build.get("dockerfile", "Dockerfile"))


def built_images(compose: dict[str, Any]) -> dict[str, str]:
    """Image repository -> component, for every image docker-compose.yml builds."""
    out = {}
    for service in compose_services(compose).values():
        build = compose_build(service)
        component = component_of_dockerfile(build[1]) if build is not None else None
        if component is not None and service.get("image"):
            out[image_repo(service["image"])] = component
    return out


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Deployment / Job / StatefulSet pod template."""
    spec = doc.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    return list(pod.get("containers") or []) + list(pod.get("initContainers") or [])


def pod_annotations(doc: dict[str, Any]) -> dict[str, str]:
    return ((doc.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}


def all_docs(manifests: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, docs in manifests.items():
        for doc in docs:
            yield path, doc


# ------------------------------------------------------------------------------------------- what the code says


@cache
def component_ports() -> dict[str, int]:
    """The port defaults of the settings classes (defaults, not this process's environment)."""
    from shelfcast.settings import Settings
    from shelfcast_agent.settings import AgentSettings
    from shelfcast_features.settings import FeatureJobSettings
    from shelfcast_forecaster.settings import ForecasterSettings

    return {
        "ingest": Settings.model_fields["ingest_port"].default,
        "forecaster": ForecasterSettings.model_fields["port"].default,
        "inventory-agent": AgentSettings.model_fields["port"].default,
        "features": FeatureJobSettings.model_fields["metrics_port"].default,
    }


def allowed_ports(component: str) -> set[int]:
    ports = {component_ports()[component]}
    return ports | {FLINK_REST_PORT} if component == "features" else ports


def _settings_classes() -> list[type[BaseSettings]]:
    for name in SETTINGS_MODULES:
        importlib.import_module(name)
    found, todo = [], list(BaseSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0].startswith("shelfcast"):
            found.append(cls)
    return found


@cache
def valid_env_names() -> frozenset[str]:
    """Every SHELFCAST_* name a service reads: settings fields (prefix + field, nested with the delimiter), plus
    names the code reads straight from the environment."""
    names = set()
    for cls in _settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        delimiter = cls.model_config.get("env_nested_delimiter")
        for field_name, field in cls.model_fields.items():
            names.add(f"{prefix}{field_name}".upper())
            annotation = field.annotation
            if delimiter and inspect.isclass(annotation) and issubclass(annotation, BaseModel):
                names.update(f"{prefix}{field_name}{delimiter}{sub}".upper() for sub in annotation.model_fields)
    direct = re.compile(r"""(?:environ\.get\(|environ\[|getenv\(|envvar=)\s*["'](SHELFCAST_[A-Z0-9_]+)["']""")
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            names.update(direct.findall(path.read_text()))
    return frozenset(names)


@cache
def cli_commands() -> dict[str, Any]:
    """The `shelfcast` command tree: group name -> its click group (typer's, duck-typed: `.commands`, `.params`)."""
    from shelfcast import cli

    cli._add_service_commands()
    return dict(typer.main.get_command(cli.app).commands)  # type: ignore[attr-defined]


@cache
def help_exit_code(group: str, name: str) -> int:
    """`shelfcast GROUP NAME --help`, run once per command."""
    from shelfcast import cli

    cli_commands()  # registers the services' subcommands
    return CliRunner().invoke(cli.app, [group, name, "--help"]).exit_code


# ----------------------------------------------------------------------------------------------------- checkers


def check_builds(compose: dict[str, Any], root: Path = ROOT) -> list[str]:
    errors = []
    for name, service in compose_services(compose).items():
        build = compose_build(service)
        if build is None:
            continue
        context, dockerfile = build
        if not (root / context).is_dir():
            errors.append(f"compose {name}: build context {context} does not exist")
        if not (root / dockerfile).is_file():
            errors.append(f"compose {name}: dockerfile {dockerfile} does not exist")
        if not service.get("image"):
            errors.append(f"compose {name}: builds an image but does not name it (image:)")
        if component_of_dockerfile(dockerfile) is None:
            errors.append(f"compose {name}: {dockerfile} is no service's or the features job's Dockerfile")
    return errors


def check_dockerfile_copies(dockerfiles: dict[str, str], root: Path = ROOT) -> list[str]:
    """COPY sources (from the build context, the repository root) exist and are not excluded by .dockerignore."""
    ignore = root / ".dockerignore"
    ignored = [line.strip() for line in ignore.read_text().splitlines()] if ignore.is_file() else []
    ignored = [p for p in ignored if p and not p.startswith("#")]
    errors = []
    for path, text in dockerfiles.items():
        for instruction, arguments in dockerfile_instructions(text):
            if instruction not in {"COPY", "ADD"}:
                continue
            words = [w for w in shlex.split(arguments) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(arguments)):
                continue
            for source in words[:-1]:
                if not (root / source).exists():
                    errors.append(f"{path}: COPY {source}: not in the build context")
                if any(source.rstrip("/") == p.rstrip("/") for p in ignored):
                    errors.append(f"{path}: COPY {source}: excluded by .dockerignore")
    return errors


def _expand(ref: str, args: dict[str, str]) -> str:
    """`${PYTHON_IMAGE}` -> the ARG's default."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), ref)


def _check_image_ref(where: str, ref: str, built: set[str]) -> list[str]:
    repo = image_repo(ref)
    if repo in built:
        return []
    if repo not in UPSTREAM_IMAGES:
        return [f"{where}: image {ref} is neither built here nor an allowed upstream image"]
    if image_tag(ref) in {None, "latest"}:
        return [f"{where}: upstream image {ref} does not pin a tag"]
    return []


def check_images(
    compose: dict[str, Any], manifests: dict[str, list[dict[str, Any]]], dockerfiles: dict[str, str]
) -> list[str]:
    built = set(built_images(compose))
    errors = []
    for name, service in compose_services(compose).items():
        if compose_build(service) is None:
            if not service.get("image"):
                errors.append(f"compose {name}: neither build nor image")
            else:
                errors += _check_image_ref(f"compose {name}", service["image"], built)
    for path, doc in all_docs(manifests):
        refs = [c.get("image", "") for c in containers(doc)]
        if doc.get("kind") == "FlinkDeployment":
            refs.append(doc.get("spec", {}).get("image", ""))
        for ref in refs:
            errors += _check_image_ref(f"{path} {doc.get('kind')}", ref, built)
    for path, text in dockerfiles.items():
        args: dict[str, str] = {}
        stages: set[str] = set()
        for instruction, arguments in dockerfile_instructions(text):
            if instruction == "ARG" and "=" in arguments:
                key, _, value = arguments.partition("=")
                args[key.strip()] = value.strip()
            elif instruction == "FROM":
                words = [w for w in arguments.split() if not w.startswith("--")]
                ref = _expand(words[0], args)
                if len(words) >= 3 and words[1].upper() == "AS":
                    stages.add(words[2])
                if ref not in stages:
                    errors += _check_image_ref(f"{path} FROM", ref, set())
            elif instruction in {"COPY", "ADD"}:
                for word in arguments.split():
                    if word.startswith("--from="):
                        ref = word.removeprefix("--from=")
                        if ref not in stages:
                            errors += _check_image_ref(f"{path} COPY --from", ref, set())
    return errors


def _compose_component(service: dict[str, Any]) -> str | None:
    build = compose_build(service)
    return component_of_dockerfile(build[1]) if build else None


def _container_port(entry: Any) -> int:
    """A compose ports / expose entry -> the container port ('127.0.0.1:19092:19092/tcp' -> 19092)."""
    if isinstance(entry, dict):
        return int(entry["target"])
    return int(str(entry).split("/", 1)[0].rsplit(":", 1)[-1])


def _port_flags(argv: list[str]) -> list[int]:
    out = []
    for i, word in enumerate(argv):
        if word == "--port" and i + 1 < len(argv):
            out.append(int(argv[i + 1]))
        elif word.startswith("--port="):
            out.append(int(word.split("=", 1)[1]))
    return out


def _argv(command: Any) -> list[str]:
    if command is None:
        return []
    return [str(w) for w in command] if isinstance(command, list) else shlex.split(str(command))


def check_ports(
    compose: dict[str, Any],
    manifests: dict[str, list[dict[str, Any]]],
    dockerfiles: dict[str, str],
    prometheus: dict[str, Any] | None,
) -> list[str]:
    ports = component_ports()
    errors = []
    # docker-compose.yml: published, exposed, health-checked and --port of every service built here.
    for name, service in compose_services(compose).items():
        component = _compose_component(service)
        if component is None:
            continue
        allowed = allowed_ports(component)
        for entry in [*(service.get("ports") or []), *(service.get("expose") or [])]:
            if _container_port(entry) not in allowed:
                errors.append(f"compose {name}: container port {entry} is not {component}'s {sorted(allowed)}")
        test = (service.get("healthcheck") or {}).get("test") or []
        for port in LOCAL_URL.findall(" ".join(_argv(test))):
            if int(port) not in allowed:
                errors.append(f"compose {name}: healthcheck on port {port}, not {component}'s {sorted(allowed)}")
        for port in _port_flags(_argv(service.get("command"))):
            if port not in allowed:
                errors.append(f"compose {name}: --port {port} is not {component}'s {sorted(allowed)}")
    # Dockerfiles: EXPOSE, HEALTHCHECK and CMD.
    for path, text in dockerfiles.items():
        component = component_of_dockerfile(path)
        if component is None:
            errors.append(f"{path}: no component (service or features job) owns it")
            continue
        allowed, exposed = allowed_ports(component), set[int]()
        for instruction, arguments in dockerfile_instructions(text):
            if instruction == "EXPOSE":
                exposed.update(int(p.split("/", 1)[0]) for p in arguments.split())
            elif instruction == "HEALTHCHECK":
                for port in LOCAL_URL.findall(arguments):
                    if int(port) not in allowed:
                        errors.append(f"{path}: HEALTHCHECK on port {port}, not {component}'s {sorted(allowed)}")
            elif instruction in {"CMD", "ENTRYPOINT"}:
                for port in _port_flags(exec_form(arguments)):
                    if port not in allowed:
                        errors.append(f"{path}: {instruction} --port {port} is not {component}'s")
        if exposed - allowed or ports[component] not in exposed:
            errors.append(f"{path}: EXPOSE {sorted(exposed)}, expected {ports[component]} (of {sorted(allowed)})")
    # Kubernetes: container ports, probes, scrape annotations, --port, and the Services in front.
    components = built_images(compose)
    named: dict[str, dict[str, int]] = {}  # app.kubernetes.io/name -> port name -> container port
    app_component: dict[str, str] = {}
    for path, doc in all_docs(manifests):
        for container in containers(doc):
            component = components.get(image_repo(container.get("image", "")))
            if component is None:
                continue
            where = f"{path} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            allowed = allowed_ports(component)
            by_name = {p["name"]: int(p["containerPort"]) for p in container.get("ports") or [] if "name" in p}
            labels = ((doc.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
            if "app.kubernetes.io/name" in labels:
                named[labels["app.kubernetes.io/name"]] = by_name
                app_component[labels["app.kubernetes.io/name"]] = component
            for port in container.get("ports") or []:
                if int(port["containerPort"]) not in allowed:
                    errors.append(f"{where}: containerPort {port['containerPort']} is not {component}'s")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                get = (container.get(probe) or {}).get("httpGet")
                if get is None:
                    continue
                port = by_name.get(get["port"], get["port"]) if isinstance(get["port"], str) else get["port"]
                if port not in allowed:
                    errors.append(f"{where}: {probe} on port {get['port']}, not {component}'s")
            for port in _port_flags(_argv(container.get("command")) + _argv(container.get("args"))):
                if port not in allowed:
                    errors.append(f"{where}: --port {port} is not {component}'s")
            scrape = pod_annotations(doc).get("prometheus.io/port")
            if scrape is not None and int(scrape) not in allowed:
                errors.append(f"{where}: prometheus.io/port {scrape} is not {component}'s")
        if doc.get("kind") == "FlinkDeployment":
            annotations = doc["spec"].get("taskManager", {}).get("podTemplate", {}).get("metadata", {})
            scrape = (annotations.get("annotations") or {}).get("prometheus.io/port")
            if scrape is not None and int(scrape) != ports["features"]:
                errors.append(f"{path}: the TaskManager's prometheus.io/port {scrape} is not the writer's metrics port")
    for path, doc in all_docs(manifests):
        if doc.get("kind") != "Service":
            continue
        app = (doc.get("spec", {}).get("selector") or {}).get("app.kubernetes.io/name")
        if app not in app_component:
            errors.append(f"{path} Service/{doc['metadata']['name']}: selects no Deployment of ours ({app})")
            continue
        expected = ports[app_component[app]]
        for port in doc["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            target = named[app].get(target, -1) if isinstance(target, str) else target
            if target != expected or port["port"] != expected:
                errors.append(f"{path} Service/{app}: port {port['port']} -> {port.get('targetPort')}, not {expected}")
    # Prometheus scrapes the compose services by name, on their ports.
    services = compose_services(compose)
    if prometheus is None:
        errors.append(f"{PROMETHEUS_CONFIG} is missing")
        prometheus = {}
    for job in prometheus.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = target.rpartition(":")
                component = _compose_component(services.get(host, {}))
                if component is None:
                    errors.append(f"{PROMETHEUS_CONFIG} {job['job_name']}: {host} is no compose service of ours")
                elif int(port) != ports[component]:
                    errors.append(
                        f"{PROMETHEUS_CONFIG} {job['job_name']}: {target}, {component} listens on {ports[component]}"
                    )
    return errors


def env_names(value: Any) -> set[str]:
    """Every SHELFCAST_* name in a parsed document (keys and string values) or a text."""
    found = set()
    for item in walk(value):
        if isinstance(item, str):
            found.update(ENV_NAME.findall(item))
    return found


def check_env(sources: dict[str, Any]) -> list[str]:
    """`sources`: where -> a parsed document or a file's text."""
    valid = valid_env_names()
    return [
        f"{where}: {name} is not a setting (no settings field or environment read has that name)"
        for where, source in sources.items()
        for name in sorted(env_names(source) - valid)
    ]


def shelfcast_invocations(argv: list[str]) -> list[list[str]]:
    """`shelfcast ...` commands in an argv, directly or inside `sh -c SCRIPT`."""
    if not argv:
        return []
    if Path(argv[0]).name == "shelfcast":
        return [argv]
    if Path(argv[0]).name in {"sh", "bash"} and "-c" in argv:
        script = argv[argv.index("-c") + 1]
        parts = re.split(r"&&|\|\||;|\{|\}|\|", script)
        return [words for part in parts if (words := shlex.split(part)) and words[0] == "shelfcast"]
    return []


def check_invocation(where: str, argv: list[str]) -> list[str]:
    """`shelfcast GROUP NAME [--options]`: the command exists, its --help runs, each option is one of its own."""
    words = [w for w in argv[1:] if not w.startswith("-")]
    if len(words) < 2:
        return [f"{where}: `{' '.join(argv)}` names no subcommand"]
    group_name, name = words[0], words[1]
    group = cli_commands().get(group_name)
    if name not in (getattr(group, "commands", None) or {}):
        return [f"{where}: `shelfcast {group_name} {name}` is not a shelfcast command"]
    command = group.commands[name]  # type: ignore[union-attr]
    if help_exit_code(group_name, name) != 0:
        return [f"{where}: `shelfcast {group_name} {name} --help` failed"]
    options = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    return [
        f"{where}: `shelfcast {group_name} {name}` has no option {word.split('=', 1)[0]}"
        for word in argv[1:]
        if word.startswith("--") and word.split("=", 1)[0] not in options
    ]


def check_commands(
    compose: dict[str, Any], manifests: dict[str, list[dict[str, Any]]], dockerfiles: dict[str, str]
) -> list[str]:
    errors = []
    for path, text in dockerfiles.items():
        runs = [exec_form(a) for i, a in dockerfile_instructions(text) if i in {"CMD", "ENTRYPOINT"}]
        invocations = [inv for argv in runs for inv in shelfcast_invocations(argv)]
        if not invocations:
            errors.append(f"{path}: its CMD / ENTRYPOINT is no `shelfcast` command")
        for argv in invocations:
            errors += check_invocation(path, argv)
    for name, service in compose_services(compose).items():
        for key in ("command", "entrypoint"):
            for argv in shelfcast_invocations(_argv(service.get(key))):
                errors += check_invocation(f"compose {name} {key}", argv)
    for path, doc in all_docs(manifests):
        for container in containers(doc):
            argv = _argv(container.get("command")) + _argv(container.get("args"))
            for invocation in shelfcast_invocations(argv):
                errors += check_invocation(f"{path} {doc.get('kind')}/{doc['metadata']['name']}", invocation)
        if doc.get("kind") == "FlinkDeployment":
            args = doc["spec"].get("job", {}).get("args") or []
            if "-pym" in args:
                module = args[args.index("-pym") + 1]
                if importlib.util.find_spec(module) is None or importlib.util.find_spec(f"{module}.__main__") is None:
                    errors.append(f"{path}: -pym {module} is not a runnable module")
    return errors


def check_mounts(compose: dict[str, Any], root: Path = ROOT) -> list[str]:
    """Files and folders docker-compose.yml mounts from the repository exist (secrets: unless operator-provided)."""
    errors = []
    for name, service in compose_services(compose).items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                source = volume.get("source", "") if volume.get("type") == "bind" else ""
            else:
                source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")) and not (root / source).exists():
                errors.append(f"compose {name}: mounts {source}, which does not exist")
    for name, secret in (compose.get("secrets") or {}).items():
        file = secret.get("file")
        if file is None:
            continue
        relative = str(Path(file))
        if relative not in OPERATOR_PROVIDED and not (root / file).exists():
            errors.append(f"compose secret {name}: {file} does not exist (and is not an operator-provided file)")
    return errors


def check_compose_order(compose: dict[str, Any], dockerfiles: dict[str, str]) -> list[str]:
    """depends_on names real services; service_healthy ones have a health check; one-shots are not restarted."""
    services = compose_services(compose)
    errors = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for other, rule in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            if other not in services:
                errors.append(f"compose {name}: depends on unknown service {other}")
                continue
            condition = rule.get("condition")
            health = services[other].get("healthcheck") or {}
            if condition == "service_healthy":
                build = compose_build(services[other])
                baked_in = dict(dockerfile_instructions(dockerfiles.get(build[1], ""))) if build else {}
                baked = "HEALTHCHECK" in baked_in
                if health.get("disable") or not (health.get("test") or baked):
                    errors.append(f"compose {name}: waits for {other} to be healthy, which has no health check")
            elif condition == "service_completed_successfully" and services[other].get("restart") not in {"no", None}:
                errors.append(f"compose {name}: waits for one-shot {other}, which restarts")
    return errors


def check_kubernetes(manifests: dict[str, list[dict[str, Any]]], root: Path = ROOT) -> list[str]:
    """The kustomization lists every manifest; references resolve; probes, HPAs and resources are there."""
    errors = []
    kustomization_path = "deploy/k8s/kustomization.yaml"
    kustomization = (manifests.get(kustomization_path) or [{}])[0]
    listed = set(kustomization.get("resources") or [])
    for resource in listed:
        target = root / "deploy/k8s" / resource
        if not target.exists():
            errors.append(f"{kustomization_path}: resource {resource} does not exist")
        elif target.is_dir():
            inner = target / "kustomization.yaml"
            if not inner.is_file():
                errors.append(f"{kustomization_path}: {resource} has no kustomization.yaml")
            else:
                for sub in yaml.safe_load(inner.read_text()).get("resources") or []:
                    if not (target / sub).exists():
                        errors.append(f"{resource}/kustomization.yaml: resource {sub} does not exist")
    for path in manifests:
        name = Path(path).name
        resource = path.startswith("deploy/k8s/") and name not in NOT_RESOURCES and ".example." not in name
        if resource and name not in listed:
            errors.append(f"{kustomization_path}: does not list {name}")
    if "../flink" not in listed:
        errors.append(f"{kustomization_path}: does not include ../flink (the FlinkDeployment)")

    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for _, doc in all_docs(manifests):
        if "kind" in doc and "metadata" in doc:
            by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    secret_keys = {
        name: set((doc.get("stringData") or {}) | (doc.get("data") or {}))
        for name, doc in by_kind.get("Secret", {}).items()
    }
    for path, doc in all_docs(manifests):
        for item in walk(doc):
            if not isinstance(item, dict):
                continue
            if "configMapRef" in item and item["configMapRef"]["name"] not in by_kind.get("ConfigMap", {}):
                errors.append(f"{path}: ConfigMap {item['configMapRef']['name']} is not defined")
            if "secretKeyRef" in item:
                ref = item["secretKeyRef"]
                if ref["key"] not in secret_keys.get(ref["name"], set()):
                    errors.append(f"{path}: Secret {ref['name']} key {ref['key']} is not in the example Secret")
            if "persistentVolumeClaim" in item:
                claim = item["persistentVolumeClaim"]["claimName"]
                if claim not in by_kind.get("PersistentVolumeClaim", {}):
                    errors.append(f"{path}: PersistentVolumeClaim {claim} is not defined")
        if doc.get("kind") == "ConfigMap":
            for key in doc.get("data") or {}:
                if ENV_NAME.fullmatch(key) is None:
                    errors.append(f"{path}: ConfigMap key {key} is not a SHELFCAST_* name")
        if doc.get("kind") == "Secret" and ".example." not in path:
            errors.append(f"{path}: ships a Secret; only an example (*.example.yaml) belongs in the repository")
    for name, doc in by_kind.get("Deployment", {}).items():
        for container in containers(doc):
            ready = (container.get("readinessProbe") or {}).get("httpGet", {}).get("path")
            live = (container.get("livenessProbe") or {}).get("httpGet", {}).get("path")
            if ready != "/readyz" or live != "/healthz":
                errors.append(f"Deployment {name}: probes {ready} / {live}, expected /readyz / /healthz")
            resources = container.get("resources") or {}
            if not resources.get("requests") or not resources.get("limits"):
                errors.append(f"Deployment {name}: container {container['name']} has no resource requests and limits")
        if pod_annotations(doc).get("prometheus.io/scrape") != "true":
            errors.append(f"Deployment {name}: no prometheus.io/scrape annotation")
    scaled = set()
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]
        if hpa.get("apiVersion") != "autoscaling/v2" or target["name"] not in by_kind.get("Deployment", {}):
            errors.append(f"HorizontalPodAutoscaler {name}: not autoscaling/v2 on a Deployment defined here")
        if not any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics") or []):
            errors.append(f"HorizontalPodAutoscaler {name}: no CPU metric")
        scaled.add(target["name"])
    for name in ("ingest", "forecaster"):
        if name not in scaled:
            errors.append(f"Deployment {name}: no HorizontalPodAutoscaler")
    return errors


# ------------------------------------------------------------------------------------------- locked surfaces

# Compose services published beyond localhost; every other published port must be bound to 127.0.0.1.
PUBLIC_COMPOSE_SERVICES = frozenset({"ingest", "grafana"})
# Compose services that talk to Redis (and so need its password), and those serving the read APIs.
COMPOSE_REDIS_CLIENTS = frozenset(
    {
        "kafka-topics",
        "flink-jobmanager",
        "flink-taskmanager",
        "features-job",
        "forecaster",
        "forecaster-gpu",
        "inventory-agent",
    }
)
COMPOSE_READ_APIS = frozenset({"forecaster", "forecaster-gpu", "inventory-agent"})
# Kubernetes workloads (pod app.kubernetes.io/name, or the FlinkDeployment's name) by what they reach.
K8S_KAFKA_CLIENTS = frozenset({"ingest", "forecaster", "inventory-agent", "shelfcast-topics", "shelfcast-features"})
K8S_REDIS_CLIENTS = frozenset({"forecaster", "inventory-agent", "shelfcast-topics", "shelfcast-features"})
K8S_READ_APIS = frozenset({"forecaster", "inventory-agent"})
KAFKA_CLIENT_LABEL, REDIS_CLIENT_LABEL = "shelfcast.io/kafka-client", "shelfcast.io/redis-client"
FLINK_LOCKS = ("web.submit.enable", "web.cancel.enable")


def _secret_file(service: dict[str, Any], variable: str) -> str | None:
    """The compose secret a `*_FILE` variable points at (/run/secrets/NAME), if the service mounts it."""
    path = str((service.get("environment") or {}).get(variable) or "")
    name = path.removeprefix("/run/secrets/")
    mounted = {s if isinstance(s, str) else s.get("source") for s in service.get("secrets") or []}
    return name if path.startswith("/run/secrets/") and name in mounted else None


def _flink_properties(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


def _published_beyond_localhost(entry: Any) -> bool:
    if isinstance(entry, dict):
        return "published" in entry and entry.get("host_ip") not in {"127.0.0.1", "::1"}
    parts = str(entry).split("/", 1)[0].rsplit(":", 2)
    return len(parts) >= 2 and (len(parts) == 2 or parts[0] not in {"127.0.0.1", "[::1]"})


def check_compose_locks(compose: dict[str, Any]) -> list[str]:
    services, errors = compose_services(compose), []
    for name, service in services.items():
        if name not in PUBLIC_COMPOSE_SERVICES:
            errors += [
                f"compose {name}: port {entry} is published beyond localhost"
                for entry in service.get("ports") or []
                if _published_beyond_localhost(entry)
            ]
        properties = (service.get("environment") or {}).get("FLINK_PROPERTIES")
        if properties is not None:
            flink = _flink_properties(properties)
            errors += [f"compose {name}: Flink {key} is not false" for key in FLINK_LOCKS if flink.get(key) != "false"]
    grafana = services.get("grafana", {})
    environment = grafana.get("environment") or {}
    if "GF_SECURITY_ADMIN_PASSWORD" in environment or _secret_file(grafana, "GF_SECURITY_ADMIN_PASSWORD__FILE") is None:
        errors.append(
            "compose grafana: the admin password does not come from a secret (GF_SECURITY_ADMIN_PASSWORD__FILE)"
        )
    if str(environment.get("GF_AUTH_ANONYMOUS_ENABLED")).lower() != "false":
        errors.append("compose grafana: anonymous access is not off (GF_AUTH_ANONYMOUS_ENABLED)")
    redis = services.get("redis", {})
    command = " ".join(_argv(redis.get("command")))
    redis_secret = next((s for s in redis.get("secrets") or [] if f"/run/secrets/{s}" in command), None)
    if "requirepass" not in command or redis_secret is None:
        errors.append("compose redis: no requirepass from a mounted secret")
    if "/run/secrets/" not in " ".join(_argv((redis.get("healthcheck") or {}).get("test"))):
        errors.append("compose redis: the health check does not authenticate")
    for name in sorted(COMPOSE_REDIS_CLIENTS):
        if _secret_file(services.get(name, {}), "SHELFCAST_REDIS_PASSWORD_FILE") != redis_secret:
            errors.append(f"compose {name}: does not use Redis's password (SHELFCAST_REDIS_PASSWORD_FILE, its secret)")
    write_secret = _secret_file(services.get("ingest", {}), "SHELFCAST_API_KEYS_FILE")
    for name in sorted(COMPOSE_READ_APIS):
        read_secret = _secret_file(services.get(name, {}), "SHELFCAST_READ_API_KEYS_FILE")
        if read_secret is None or read_secret == write_secret:
            errors.append(f"compose {name}: no read keys of its own (SHELFCAST_READ_API_KEYS_FILE from a secret)")
    return errors


def _workloads(manifests: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[dict[str, str], list[dict[str, Any]]]]:
    """Workload name -> (pod labels, containers): Deployments and Jobs by app.kubernetes.io/name, the FlinkDeployment
    by its name."""
    out = {}
    for _, doc in all_docs(manifests):
        if doc.get("kind") == "FlinkDeployment":
            template = doc["spec"].get("podTemplate") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            out[doc["metadata"]["name"]] = (labels, list((template.get("spec") or {}).get("containers") or []))
        elif containers(doc):
            labels = doc["spec"]["template"].get("metadata", {}).get("labels") or {}
            out[labels.get("app.kubernetes.io/name", doc["metadata"]["name"])] = (labels, containers(doc))
    return out


def _secret_env(container: dict[str, Any], variable: str) -> str | None:
    """The Secret key a container's `variable` comes from; None when it is not set from a Secret."""
    for entry in container.get("env") or []:
        if entry.get("name") == variable:
            return ((entry.get("valueFrom") or {}).get("secretKeyRef") or {}).get("key")
    return None


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return (policy["spec"].get("podSelector") or {}).get("matchLabels") == labels


def _only_from(policy: dict[str, Any], label: str, port: int) -> bool:
    rules = policy["spec"].get("ingress") or []
    sources = [source for rule in rules for source in rule.get("from") or [{}]]
    ports = {p.get("port") for rule in rules for p in rule.get("ports") or [{}]}
    return (
        bool(rules) and ports == {port} and all(s == {"podSelector": {"matchLabels": {label: "true"}}} for s in sources)
    )


def check_kubernetes_locks(manifests: dict[str, list[dict[str, Any]]]) -> list[str]:
    errors = []
    docs = [doc for _, doc in all_docs(manifests)]
    for doc in docs:
        if doc.get("kind") == "FlinkDeployment":
            flink = {k: str(v).lower() for k, v in (doc["spec"].get("flinkConfiguration") or {}).items()}
            errors += [f"FlinkDeployment: {key} is not false" for key in FLINK_LOCKS if flink.get(key) != "false"]
        exposed = doc.get("kind") == "Service" and doc["spec"].get("type", "ClusterIP") != "ClusterIP"
        if exposed and doc["metadata"]["name"] != "ingest":
            errors.append(f"Service {doc['metadata']['name']}: {doc['spec']['type']}, only ingest may be exposed")
        if doc.get("kind") == "ConfigMap" and "SHELFCAST_REDIS_URL" in (doc.get("data") or {}):
            errors.append(f"ConfigMap {doc['metadata']['name']}: SHELFCAST_REDIS_URL (with Redis's password) in plain")
    for name, (labels, pod_containers) in _workloads(manifests).items():
        for label, clients in ((KAFKA_CLIENT_LABEL, K8S_KAFKA_CLIENTS), (REDIS_CLIENT_LABEL, K8S_REDIS_CLIENTS)):
            if (labels.get(label) == "true") != (name in clients):
                errors.append(f"{name}: label {label} is {labels.get(label)}, expected only on {sorted(clients)}")
        for container in pod_containers:
            uses_redis = _secret_env(container, "SHELFCAST_REDIS_URL") is not None
            if uses_redis != (name in K8S_REDIS_CLIENTS):
                errors.append(
                    f"{name}: SHELFCAST_REDIS_URL from the Secret is {uses_redis}, expected only on Redis's clients"
                )
            read_key = _secret_env(container, "SHELFCAST_READ_API_KEYS")
            if name in K8S_READ_APIS and (read_key is None or read_key == _secret_env(container, "SHELFCAST_API_KEYS")):
                errors.append(f"{name}: no read keys of its own (SHELFCAST_READ_API_KEYS from the Secret)")
    policies = [doc for doc in docs if doc.get("kind") == "NetworkPolicy"]
    if not any(
        p["spec"].get("podSelector") == {}
        and p["spec"].get("policyTypes") == ["Ingress"]
        and not p["spec"].get("ingress")
        for p in policies
    ):
        errors.append("NetworkPolicy: no default deny of ingress in the namespace")
    for server, label, port in (("redis", REDIS_CLIENT_LABEL, 6379), ("kafka", KAFKA_CLIENT_LABEL, 9092)):
        guarding = [p for p in policies if _selects(p, {"app.kubernetes.io/name": server})]
        if not guarding or not all(_only_from(p, label, port) for p in guarding):
            errors.append(f"NetworkPolicy: {server} does not take ingress only from pods labelled {label} on {port}")
    non_clients = [
        p
        for p in policies
        if "Egress" in (p["spec"].get("policyTypes") or [])
        and {"key": KAFKA_CLIENT_LABEL, "operator": "DoesNotExist"}
        in (p["spec"]["podSelector"].get("matchExpressions") or [])
        and {"key": REDIS_CLIENT_LABEL, "operator": "DoesNotExist"}
        in (p["spec"]["podSelector"].get("matchExpressions") or [])
    ]
    dns_only = [
        p
        for p in non_clients
        if all({q.get("port") for q in r.get("ports") or [{}]} == {53} for r in p["spec"].get("egress") or [])
    ]
    if not dns_only:
        errors.append("NetworkPolicy: pods that are neither Kafka nor Redis clients are not limited to DNS egress")
    return errors


# -------------------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    return load_manifests()


@pytest.fixture(scope="module")
def dockerfiles() -> dict[str, str]:
    return load_dockerfiles()


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any] | None:
    path = ROOT / PROMETHEUS_CONFIG
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def test_every_deploy_file_is_there(dockerfiles: dict[str, str], manifests: dict[str, list[dict[str, Any]]]) -> None:
    expected = {
        "services/ingest/Dockerfile",
        "services/forecaster/Dockerfile",
        "services/forecaster/Dockerfile.gpu",
        "services/inventory-agent/Dockerfile",
        "flink_jobs/Dockerfile",
    }
    assert expected <= set(dockerfiles)
    assert "deploy/flink/features-job.yaml" in manifests
    assert (ROOT / ".dockerignore").is_file()


def test_builds_and_copies(compose: dict[str, Any], dockerfiles: dict[str, str]) -> None:
    assert check_builds(compose) + check_dockerfile_copies(dockerfiles) == []


def test_images(
    compose: dict[str, Any], manifests: dict[str, list[dict[str, Any]]], dockerfiles: dict[str, str]
) -> None:
    assert check_images(compose, manifests, dockerfiles) == []


def test_ports_match_the_settings(
    compose: dict[str, Any],
    manifests: dict[str, list[dict[str, Any]]],
    dockerfiles: dict[str, str],
    prometheus: dict[str, Any] | None,
) -> None:
    assert check_ports(compose, manifests, dockerfiles, prometheus) == []


def test_env_names_are_settings(
    compose: dict[str, Any], manifests: dict[str, list[dict[str, Any]]], dockerfiles: dict[str, str]
) -> None:
    sources: dict[str, Any] = {COMPOSE_FILE: compose, **manifests, **dockerfiles}
    assert check_env(sources) == []
    # The names in use are a good part of what the settings offer, not a vacuous pass.
    used = set().union(*(env_names(s) for s in sources.values()))
    assert {"SHELFCAST_KAFKA_BOOTSTRAP", "SHELFCAST_REDIS_URL", "SHELFCAST_API_KEYS_FILE", "SHELFCAST_API_KEYS"} <= used


def test_commands_are_shelfcast_commands(
    compose: dict[str, Any], manifests: dict[str, list[dict[str, Any]]], dockerfiles: dict[str, str]
) -> None:
    assert check_commands(compose, manifests, dockerfiles) == []


def test_mounts_exist(compose: dict[str, Any]) -> None:
    # deploy/prometheus and deploy/grafana are mounted into Prometheus and Grafana: checked like the rest.
    assert check_mounts(compose) == []


def test_compose_start_order(compose: dict[str, Any], dockerfiles: dict[str, str]) -> None:
    assert check_compose_order(compose, dockerfiles) == []
    services = compose_services(compose)
    for name in ("ingest", "forecaster", "inventory-agent", "features-job"):
        assert services[name]["depends_on"]["kafka-topics"]["condition"] == "service_completed_successfully"
    assert shelfcast_invocations(_argv(services["kafka-topics"]["command"]))[0][1:3] == ["infra", "up"]


def test_kubernetes(manifests: dict[str, list[dict[str, Any]]]) -> None:
    assert check_kubernetes(manifests) == []


def test_surfaces_are_locked(compose: dict[str, Any], manifests: dict[str, list[dict[str, Any]]]) -> None:
    assert check_compose_locks(compose) + check_kubernetes_locks(manifests) == []


# ------------------------------------------------------------------------------- each check can fail


def _service(data: dict[str, Any], name: str) -> dict[str, Any]:
    return data["compose"]["services"][name]


def _doc(data: dict[str, Any], path: str, kind: str) -> dict[str, Any]:
    return next(d for d in data["manifests"][path] if d["kind"] == kind)


def _container(data: dict[str, Any], path: str) -> dict[str, Any]:
    return containers(_doc(data, path, "Deployment"))[0]


def _edit_dockerfile(path: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        assert old in data["dockerfiles"][path]
        data["dockerfiles"][path] = data["dockerfiles"][path].replace(old, new)

    return edit


def _run_all(data: dict[str, Any]) -> list[str]:
    compose, manifests, dockerfiles = data["compose"], data["manifests"], data["dockerfiles"]
    return [
        *check_builds(compose),
        *check_dockerfile_copies(dockerfiles),
        *check_images(compose, manifests, dockerfiles),
        *check_ports(compose, manifests, dockerfiles, data["prometheus"]),
        *check_env({COMPOSE_FILE: compose, **manifests, **dockerfiles}),
        *check_commands(compose, manifests, dockerfiles),
        *check_mounts(compose),
        *check_compose_order(compose, dockerfiles),
        *check_kubernetes(manifests),
        *check_compose_locks(compose),
        *check_kubernetes_locks(manifests),
    ]


BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "compose wrong published port": (
        lambda d: _service(d, "ingest").update(ports=["8080:8081"]),
        "container port 8080:8081",
    ),
    "compose wrong healthcheck port": (
        lambda d: _service(d, "forecaster")["healthcheck"].update(
            test=["CMD", "curl", "-f", "http://127.0.0.1:8091/readyz"]
        ),
        "healthcheck on port 8091",
    ),
    "compose wrong --port": (
        lambda d: _service(d, "inventory-agent").update(command=["shelfcast", "agent", "run", "--port", "8101"]),
        "--port 8101",
    ),
    "compose unknown env var": (
        lambda d: _service(d, "ingest")["environment"].update(SHELFCAST_INGEST_PROT="8080"),
        "SHELFCAST_INGEST_PROT is not a setting",
    ),
    "compose unknown nested env var": (
        lambda d: _service(d, "ingest")["environment"].update(SHELFCAST_TOPICS__EVENTZ="x"),
        "SHELFCAST_TOPICS__EVENTZ is not a setting",
    ),
    "compose missing dockerfile": (
        lambda d: _service(d, "ingest").update(build={"context": ".", "dockerfile": "services/ingest/Dockerfile.nope"}),
        "dockerfile services/ingest/Dockerfile.nope does not exist",
    ),
    "compose missing context": (
        lambda d: _service(d, "ingest").update(build={"context": "nowhere"}),
        "build context nowhere does not exist",
    ),
    "compose unknown image": (
        lambda d: _service(d, "kafka").update(image="confluentinc/cp-kafka:7.6.0"),
        "confluentinc/cp-kafka:7.6.0 is neither built here",
    ),
    "compose unpinned upstream image": (
        lambda d: _service(d, "redis").update(image="redis"),
        "does not pin a tag",
    ),
    "compose missing mount": (
        lambda d: _service(d, "grafana")["volumes"].append("./deploy/grafana/nothing-here:/x:ro"),
        "mounts ./deploy/grafana/nothing-here",
    ),
    "compose missing secret file": (
        lambda d: d["compose"]["secrets"].update(other={"file": "./secrets/other"}),
        "./secrets/other does not exist",
    ),
    "compose unknown subcommand": (
        lambda d: _service(d, "ingest").update(command=["shelfcast", "ingest", "serv"]),
        "`shelfcast ingest serv` is not a shelfcast command",
    ),
    "compose unknown option": (
        lambda d: _service(d, "ingest").update(command=["shelfcast", "ingest", "serve", "--prot", "8080"]),
        "has no option --prot",
    ),
    "compose unknown command inside sh -c": (
        lambda d: _service(d, "forecaster-train").update(command=["sh", "-c", "shelfcast forecaster fit --out /m"]),
        "`shelfcast forecaster fit` is not a shelfcast command",
    ),
    "compose waits on a service without health check": (
        lambda d: _service(d, "redis").pop("healthcheck"),
        "waits for redis to be healthy, which has no health check",
    ),
    "compose unknown dependency": (
        lambda d: _service(d, "ingest")["depends_on"].update(zookeeper={"condition": "service_started"}),
        "depends on unknown service zookeeper",
    ),
    "k8s wrong containerPort": (
        lambda d: _container(d, "deploy/k8s/forecaster.yaml")["ports"][0].update(containerPort=8091),
        "containerPort 8091",
    ),
    "k8s wrong probe port": (
        lambda d: _container(d, "deploy/k8s/inventory-agent.yaml")["readinessProbe"]["httpGet"].update(port=9100),
        "readinessProbe on port 9100",
    ),
    "k8s wrong probe path": (
        lambda d: _container(d, "deploy/k8s/ingest.yaml")["livenessProbe"]["httpGet"].update(path="/health"),
        "expected /readyz / /healthz",
    ),
    "k8s wrong service port": (
        lambda d: _doc(d, "deploy/k8s/ingest.yaml", "Service")["spec"]["ports"][0].update(targetPort=80),
        "Service/ingest: port 8080 -> 80",
    ),
    "k8s wrong scrape annotation": (
        lambda d: pod_annotations(_doc(d, "deploy/k8s/ingest.yaml", "Deployment")).update(
            {"prometheus.io/port": "9090"}
        ),
        "prometheus.io/port 9090",
    ),
    "k8s unknown image": (
        lambda d: _container(d, "deploy/k8s/ingest.yaml").update(image="someone/else:1.0"),
        "someone/else:1.0 is neither built here",
    ),
    "k8s unknown env var": (
        lambda d: _doc(d, "deploy/k8s/configmap.yaml", "ConfigMap")["data"].update(SHELFCAST_REDIS_URI="x"),
        "SHELFCAST_REDIS_URI is not a setting",
    ),
    "k8s unknown secret key": (
        lambda d: _container(d, "deploy/k8s/ingest.yaml")["env"][0]["valueFrom"]["secretKeyRef"].update(key="keys"),
        "Secret shelfcast-secrets key keys",
    ),
    "k8s unknown subcommand": (
        lambda d: _container(d, "deploy/k8s/ingest.yaml").update(command=["shelfcast", "ingest", "start"]),
        "`shelfcast ingest start` is not a shelfcast command",
    ),
    "k8s unlisted manifest": (
        lambda d: d["manifests"]["deploy/k8s/kustomization.yaml"][0]["resources"].remove("hpa.yaml"),
        "does not list hpa.yaml",
    ),
    "k8s missing hpa": (
        lambda d: d["manifests"]["deploy/k8s/hpa.yaml"].pop(),
        "Deployment forecaster: no HorizontalPodAutoscaler",
    ),
    "flink wrong python module": (
        lambda d: _doc(d, "deploy/flink/features-job.yaml", "FlinkDeployment")["spec"]["job"].update(
            args=["-pym", "shelfcast_featurez"]
        ),
        "-pym shelfcast_featurez is not a runnable module",
    ),
    "flink unknown env var": (
        lambda d: _doc(d, "deploy/flink/features-job.yaml", "FlinkDeployment")["spec"]["podTemplate"]["spec"][
            "containers"
        ][0]["env"].append({"name": "SHELFCAST_FLINK_JAR_DIR", "value": "/x"}),
        "SHELFCAST_FLINK_JAR_DIR is not a setting",
    ),
    "dockerfile wrong EXPOSE": (
        _edit_dockerfile("services/ingest/Dockerfile", "EXPOSE 8080", "EXPOSE 8081"),
        "EXPOSE [8081], expected 8080",
    ),
    "dockerfile wrong healthcheck port": (
        _edit_dockerfile("services/inventory-agent/Dockerfile", "127.0.0.1:8100/healthz", "127.0.0.1:8000/healthz"),
        "HEALTHCHECK on port 8000",
    ),
    "dockerfile unknown subcommand": (
        _edit_dockerfile("services/forecaster/Dockerfile", '"forecaster", "serve"', '"forecaster", "server"'),
        "`shelfcast forecaster server` is not a shelfcast command",
    ),
    "dockerfile CMD not shelfcast": (
        _edit_dockerfile("flink_jobs/Dockerfile", 'CMD ["shelfcast", "features", "run"]', 'CMD ["jobmanager"]'),
        "is no `shelfcast` command",
    ),
    "dockerfile unknown env var": (
        _edit_dockerfile("services/forecaster/Dockerfile.gpu", "SHELFCAST_FORECASTER_REGISTRY=", "SHELFCAST_MODELS="),
        "SHELFCAST_MODELS is not a setting",
    ),
    "dockerfile unknown base image": (
        _edit_dockerfile("services/ingest/Dockerfile", "python:3.11-slim-bookworm", "someone/python:3.11"),
        "someone/python:3.11 is neither built here",
    ),
    "dockerfile copies what is not there": (
        _edit_dockerfile("services/ingest/Dockerfile", "COPY src ./src", "COPY source ./src"),
        "COPY source: not in the build context",
    ),
    "prometheus scrapes a wrong port": (
        lambda d: d["prometheus"]["scrape_configs"][0]["static_configs"][0].update(targets=["ingest:9999"]),
        "ingest:9999, ingest listens on 8080",
    ),
    "prometheus scrapes an unknown host": (
        lambda d: d["prometheus"]["scrape_configs"][0]["static_configs"][0].update(targets=["ingester:8080"]),
        "ingester is no compose service of ours",
    ),
    # locked surfaces
    "compose publishes redis on every interface": (
        lambda d: _service(d, "redis").update(ports=["6379:6379"]),
        "compose redis: port 6379:6379 is published beyond localhost",
    ),
    "compose publishes the agent on every interface (long form)": (
        lambda d: _service(d, "inventory-agent").update(ports=[{"target": 8100, "published": 8100}]),
        "compose inventory-agent: port {'target': 8100, 'published': 8100} is published beyond localhost",
    ),
    "compose flink accepts job uploads": (
        lambda d: _service(d, "flink-jobmanager").update(
            environment={
                **_service(d, "flink-jobmanager")["environment"],
                "FLINK_PROPERTIES": _service(d, "flink-jobmanager")["environment"]["FLINK_PROPERTIES"].replace(
                    "web.submit.enable: false", "web.submit.enable: true"
                ),
            }
        ),
        "compose flink-jobmanager: Flink web.submit.enable is not false",
    ),
    "compose flink accepts cancels": (
        lambda d: _service(d, "flink-taskmanager").update(
            environment={
                **_service(d, "flink-taskmanager")["environment"],
                "FLINK_PROPERTIES": "jobmanager.rpc.address: flink-jobmanager\nweb.submit.enable: false\n",
            }
        ),
        "compose flink-taskmanager: Flink web.cancel.enable is not false",
    ),
    "compose grafana password in plain": (
        lambda d: _service(d, "grafana")["environment"].update(GF_SECURITY_ADMIN_PASSWORD="admin"),
        "compose grafana: the admin password does not come from a secret",
    ),
    "compose grafana password file not mounted": (
        lambda d: _service(d, "grafana").pop("secrets"),
        "compose grafana: the admin password does not come from a secret",
    ),
    "compose grafana anonymous": (
        lambda d: _service(d, "grafana")["environment"].pop("GF_AUTH_ANONYMOUS_ENABLED"),
        "compose grafana: anonymous access is not off",
    ),
    "compose redis without a password": (
        lambda d: _service(d, "redis").update(command=["redis-server", "--appendonly", "yes"]),
        "compose redis: no requirepass from a mounted secret",
    ),
    "compose redis health check without the password": (
        lambda d: _service(d, "redis")["healthcheck"].update(test=["CMD", "redis-cli", "ping"]),
        "compose redis: the health check does not authenticate",
    ),
    "compose agent without the redis password": (
        lambda d: _service(d, "inventory-agent").update(
            environment={k: v for k, v in _service(d, "inventory-agent")["environment"].items() if "PASSWORD" not in k}
        ),
        "compose inventory-agent: does not use Redis's password",
    ),
    "compose features job without the redis secret": (
        lambda d: _service(d, "features-job").pop("secrets"),
        "compose features-job: does not use Redis's password",
    ),
    "compose forecaster reads with the write keys": (
        lambda d: _service(d, "forecaster").update(
            secrets=["api_keys", "redis_password"],
            environment={
                **_service(d, "forecaster")["environment"],
                "SHELFCAST_READ_API_KEYS_FILE": "/run/secrets/api_keys",
            },
        ),
        "compose forecaster: no read keys of its own",
    ),
    "k8s flink accepts cancels": (
        lambda d: _doc(d, "deploy/flink/features-job.yaml", "FlinkDeployment")["spec"]["flinkConfiguration"].pop(
            "web.cancel.enable"
        ),
        "FlinkDeployment: web.cancel.enable is not false",
    ),
    "k8s agent exposed": (
        lambda d: _doc(d, "deploy/k8s/inventory-agent.yaml", "Service")["spec"].update(type="LoadBalancer"),
        "Service inventory-agent: LoadBalancer, only ingest may be exposed",
    ),
    "k8s redis url in the configmap": (
        lambda d: _doc(d, "deploy/k8s/configmap.yaml", "ConfigMap")["data"].update(
            SHELFCAST_REDIS_URL="redis://:pw@redis:6379/0"
        ),
        "SHELFCAST_REDIS_URL (with Redis's password) in plain",
    ),
    "k8s ingest labelled a redis client": (
        lambda d: _doc(d, "deploy/k8s/ingest.yaml", "Deployment")["spec"]["template"]["metadata"]["labels"].update(
            {REDIS_CLIENT_LABEL: "true"}
        ),
        "ingest: label shelfcast.io/redis-client is true",
    ),
    "k8s agent not labelled a kafka client": (
        lambda d: _doc(d, "deploy/k8s/inventory-agent.yaml", "Deployment")["spec"]["template"]["metadata"][
            "labels"
        ].pop(KAFKA_CLIENT_LABEL),
        "inventory-agent: label shelfcast.io/kafka-client is None",
    ),
    "k8s forecaster without the redis url": (
        lambda d: _container(d, "deploy/k8s/forecaster.yaml").update(
            env=[e for e in _container(d, "deploy/k8s/forecaster.yaml")["env"] if e["name"] != "SHELFCAST_REDIS_URL"]
        ),
        "forecaster: SHELFCAST_REDIS_URL from the Secret is False",
    ),
    "k8s agent without read keys": (
        lambda d: _container(d, "deploy/k8s/inventory-agent.yaml").update(
            env=[e for e in _container(d, "deploy/k8s/inventory-agent.yaml")["env"] if "READ" not in e["name"]]
        ),
        "inventory-agent: no read keys of its own",
    ),
    "k8s no default deny": (
        lambda d: d["manifests"]["deploy/k8s/networkpolicy.yaml"].pop(0),
        "NetworkPolicy: no default deny of ingress",
    ),
    "k8s redis open to every pod": (
        lambda d: next(
            p
            for p in d["manifests"]["deploy/k8s/networkpolicy.yaml"]
            if p["metadata"]["name"] == "redis-from-its-clients"
        )["spec"]["ingress"][0].update({"from": [{"podSelector": {}}]}),
        "NetworkPolicy: redis does not take ingress only from pods labelled shelfcast.io/redis-client on 6379",
    ),
    "k8s kafka policy gone": (
        lambda d: d["manifests"].update(
            {
                "deploy/k8s/networkpolicy.yaml": [
                    p
                    for p in d["manifests"]["deploy/k8s/networkpolicy.yaml"]
                    if p["metadata"]["name"] != "kafka-from-its-clients"
                ]
            }
        ),
        "NetworkPolicy: kafka does not take ingress only from pods labelled shelfcast.io/kafka-client on 9092",
    ),
    "k8s non-clients may reach anything": (
        lambda d: next(
            p
            for p in d["manifests"]["deploy/k8s/networkpolicy.yaml"]
            if p["metadata"]["name"] == "no-egress-for-non-clients"
        )["spec"]["egress"][0].update(ports=[{"protocol": "TCP", "port": 9092}]),
        "NetworkPolicy: pods that are neither Kafka nor Redis clients are not limited to DNS egress",
    ),
}


@pytest.fixture(scope="module")
def pristine(
    compose: dict[str, Any],
    manifests: dict[str, list[dict[str, Any]]],
    dockerfiles: dict[str, str],
    prometheus: dict[str, Any] | None,
) -> dict[str, Any]:
    data = {"compose": compose, "manifests": manifests, "dockerfiles": dockerfiles, "prometheus": prometheus}
    assert _run_all(copy.deepcopy(data)) == []
    return data


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_check_fails_on_a_broken_copy(pristine: dict[str, Any], breakage: str) -> None:
    if breakage.startswith("prometheus") and pristine["prometheus"] is None:
        pytest.skip(f"{PROMETHEUS_CONFIG} is not there yet")
    data = copy.deepcopy(pristine)
    edit, expected = BREAKAGES[breakage]
    edit(data)
    errors = _run_all(data)
    assert any(expected in error for error in errors), errors


def test_valid_env_names_come_from_the_settings() -> None:
    names = valid_env_names()
    assert {"SHELFCAST_INGEST_PORT", "SHELFCAST_FORECASTER_PORT", "SHELFCAST_AGENT_PORT"} <= names
    assert {"SHELFCAST_FEATURES_METRICS_PORT", "SHELFCAST_INGEST_MAX_EVENTS", "SHELFCAST_TOPICS__EVENTS"} <= names
    assert "SHELFCAST_FLINK_JARS_DIR" in names  # read straight from os.environ by the features job
    assert "SHELFCAST_INGEST_PROT" not in names
