"""The backends' configuration holds together: docker-compose.yml, collector-config/, main.go.

Most checks read files only; the ones marked ``backends`` run the built binaries (``validate``,
``components``) through the ``backend_binaries`` fixture of tests/backends.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.backends import REPO_ROOT, BackendBinaries, free_ports

COMPOSE = REPO_ROOT / "docker-compose.yml"
OTELCOL = REPO_ROOT / "collector-config" / "otelcol.yaml"
SAMPLER = REPO_ROOT / "collector-config" / "gateway" / "sampler.yaml"
LOADBALANCER = REPO_ROOT / "collector-config" / "gateway" / "loadbalancer.yaml"
PROFILES = {"otelcol": [OTELCOL], "sampler": [OTELCOL, SAMPLER], "loadbalancer": [LOADBALANCER]}
"""Each collector the project runs, as the --config files it is started with (later ones merged over earlier)."""
JAEGER = REPO_ROOT / "collector-config" / "jaeger.yaml"
DATASOURCES = REPO_ROOT / "collector-config" / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
MAIN_GO = REPO_ROOT / "backends" / "collector" / "main.go"
COLLECTOR_GO_MOD = REPO_ROOT / "backends" / "collector" / "go.mod"
JAEGER_GO_MOD = REPO_ROOT / "backends" / "jaeger" / "go.mod"
BACKENDS_PY = REPO_ROOT / "tests" / "backends.py"

COLLECTOR_RELEASE = "0.161.0"
"""The one collector release: every module in backends/collector and the contrib image in compose."""

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")

# Factory packages whose component type is not their package name minus the kind: the core
# OTLP exporter registers "otlp_grpc" (and the deprecated alias "otlp") since v0.16x, the
# contrib load-balancing exporter "load_balancing" (and the alias "loadbalancing").
TYPE_ALIASES = {"otlpexporter": {"otlp_grpc", "otlp"}, "loadbalancingexporter": {"load_balancing", "loadbalancing"}}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _expand(value: Any, env: dict[str, str]) -> Any:
    """Resolve ``${env:NAME:-default}`` the way the collector does (env first, then default)."""
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        assert default is not None, f"${{env:{name}}} has no default"
        return default

    return ENV_REF.sub(sub, value)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load(COMPOSE)
    assert isinstance(data, dict)
    return data


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of every published port (short syntax)."""
    out = []
    for spec in service.get("ports") or []:
        parts = str(spec).split("/")[0].split(":")
        assert len(parts) == 3, f"port {spec!r} must be HOST_IP:HOST_PORT:CONTAINER_PORT"
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of bind mounts (short syntax, host path starts with . or /)."""
    mounts = []
    for spec in service.get("volumes") or []:
        if isinstance(spec, dict):
            if spec.get("type") == "bind":
                mounts.append((spec["source"], spec["target"]))
            continue
        source, target = str(spec).split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def _listening_ports(cfg: dict[str, Any], env: dict[str, str]) -> set[int]:
    """The ports a collector config listens on for OTLP (gRPC, HTTP) and health checks."""
    protocols = cfg["receivers"]["otlp"]["protocols"]
    endpoints = [
        protocols["grpc"]["endpoint"],
        protocols["http"]["endpoint"],
        cfg["extensions"]["health_check"]["endpoint"],
    ]
    return {_port(_expand(endpoint, env)) for endpoint in endpoints}


def _collector_service(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["otel-collector"]


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_parses_with_expected_services(compose: dict[str, Any]) -> None:
    assert {"otel-collector", "jaeger", "grafana"} <= set(compose["services"])


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: image {image!r} has no tag"
        assert "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{name}: tag {tag!r} is not a version"


def test_collector_and_jaeger_images_match_the_built_versions(compose: dict[str, Any]) -> None:
    image = compose["services"]["otel-collector"]["image"]
    assert image == f"otel/opentelemetry-collector-contrib:{COLLECTOR_RELEASE}"
    assert f"go.opentelemetry.io/collector/otelcol v{COLLECTOR_RELEASE}\n" in COLLECTOR_GO_MOD.read_text()
    # Jaeger v2.13.0 is the same code as module github.com/jaegertracing/jaeger v1.76.0
    assert compose["services"]["jaeger"]["image"] == "jaegertracing/jaeger:2.13.0"
    assert "github.com/jaegertracing/jaeger v1.76.0" in JAEGER_GO_MOD.read_text()


def test_every_mounted_host_file_exists(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for spec in service.get("volumes") or []:
            source = spec["source"] if isinstance(spec, dict) else str(spec).split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in named, f"{name}: volume {source!r} is not declared"


def test_ports_are_bound_to_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for host_ip, _, _ in _published(service):
            assert host_ip == "127.0.0.1", f"{name}: publishes on {host_ip}"


def test_collector_mounts_exactly_the_tested_config(compose: dict[str, Any]) -> None:
    service = _collector_service(compose)
    mounts = _bind_mounts(service)
    assert [(REPO_ROOT / src).resolve() for src, _ in mounts] == [OTELCOL.resolve()]
    target = mounts[0][1]
    command = service["command"]
    args = command if isinstance(command, list) else command.split()
    assert f"--config={target}" in args or ["--config", target] in [args[i : i + 2] for i in range(len(args))]


def test_collector_ports_line_up_with_otelcol_yaml(compose: dict[str, Any]) -> None:
    service = _collector_service(compose)
    env = _service_env(service)
    cfg = _load(OTELCOL)
    listening = _listening_ports(cfg, env)
    published = {container for _, _, container in _published(service)}
    assert published == listening
    assert {(h, c) for _, h, c in _published(service)} == {(p, p) for p in listening}
    # the collector exports to Jaeger's OTLP/gRPC receiver
    jaeger_env = _service_env(compose["services"]["jaeger"])
    jaeger_cfg = _load(JAEGER)
    jaeger_grpc = _port(_expand(jaeger_cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"], jaeger_env))
    exporter = _expand(cfg["exporters"]["otlp_grpc/jaeger"]["endpoint"], env)
    assert exporter == f"jaeger:{jaeger_grpc}"


GATEWAY_SERVICES = {"gateway", "sampler-1", "sampler-2"}


def _command_configs(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    args = command if isinstance(command, list) else command.split()
    return [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def test_gateway_profile_is_opt_in(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {n for n, svc in services.items() if svc.get("profiles")} == GATEWAY_SERVICES
    assert all(services[n]["profiles"] == ["gateway"] for n in GATEWAY_SERVICES)
    for name in GATEWAY_SERVICES:
        assert services[name]["image"] == f"otel/opentelemetry-collector-contrib:{COLLECTOR_RELEASE}"


def test_gateway_services_run_the_tested_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"gateway": PROFILES["loadbalancer"], "sampler-1": PROFILES["sampler"], "sampler-2": PROFILES["sampler"]}
    for name, files in expected.items():
        mounts = {target: (REPO_ROOT / source).resolve() for source, target in _bind_mounts(services[name])}
        assert [mounts[target] for target in _command_configs(services[name])] == [f.resolve() for f in files]


def test_gateway_routes_to_every_sampler_and_samplers_to_jaeger(compose: dict[str, Any]) -> None:
    services = compose["services"]
    lb_env = _service_env(services["gateway"])
    lb = _load(LOADBALANCER)
    hostnames = yaml.safe_load(_expand(lb["exporters"]["load_balancing"]["resolver"]["static"]["hostnames"], lb_env))
    samplers = sorted(n for n in GATEWAY_SERVICES if n.startswith("sampler"))
    sampler_cfg = _profile("sampler")
    grpc = {
        n: _port(_expand(sampler_cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"], _service_env(services[n])))
        for n in samplers
    }
    assert sorted(hostnames) == [f"{n}:{grpc[n]}" for n in samplers]
    jaeger_grpc = _port(
        _expand(_load(JAEGER)["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"], _service_env(services["jaeger"]))
    )
    files = set()
    for name in samplers:
        env = _service_env(services[name])
        assert _expand(sampler_cfg["exporters"]["otlp_grpc/jaeger"]["endpoint"], env) == f"jaeger:{jaeger_grpc}"
        files.add(_expand(sampler_cfg["exporters"]["file"]["path"], env))
        assert not _published(services[name]), "samplers are reached through the gateway only"
    assert len(files) == len(samplers), "each sampler needs its own archive file (the file exporter rotates it)"


def test_gateway_ports_line_up_and_do_not_clash(compose: dict[str, Any]) -> None:
    service = compose["services"]["gateway"]
    env = _service_env(service)
    listening = _listening_ports(_load(LOADBALANCER), env)
    assert {container for _, _, container in _published(service)} == listening
    host_ports = [host for svc in compose["services"].values() for _, host, _ in _published(svc)]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


def test_jaeger_and_grafana_ports_line_up(compose: dict[str, Any]) -> None:
    jaeger = compose["services"]["jaeger"]
    cfg = _load(JAEGER)
    query_port = _port(_expand(cfg["extensions"]["jaeger_query"]["http"]["endpoint"], _service_env(jaeger)))
    assert {c for _, _, c in _published(jaeger)} == {query_port}
    mounts = dict(_bind_mounts(jaeger))
    assert (REPO_ROOT / next(iter(mounts))).resolve() == JAEGER.resolve()
    assert next(iter(mounts.values())) in jaeger["command"]
    [datasource] = _load(DATASOURCES)["datasources"]
    assert datasource["type"] == "jaeger"
    assert datasource["url"] == f"http://jaeger:{query_port}"


def test_grafana_is_anonymous_viewer(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    env = _service_env(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    sources = {(REPO_ROOT / s).resolve() for s, _ in _bind_mounts(grafana)}
    assert DATASOURCES.resolve().is_relative_to(next(iter(sources)))


# ---------------------------------------------------------------------------------------------
# collector-config/*.yaml


@pytest.mark.parametrize(
    "path", [OTELCOL, JAEGER, SAMPLER, LOADBALANCER], ids=["otelcol", "jaeger", "sampler", "loadbalancer"]
)
def test_every_env_reference_has_a_default(path: Path) -> None:
    refs = ENV_REF.findall(path.read_text(encoding="utf-8"))
    assert refs
    assert [name for name, default in refs if not default] == []


def test_env_names_set_by_the_tests_exist_in_the_configs() -> None:
    configs = "".join(p.read_text() for p in (OTELCOL, JAEGER, SAMPLER, LOADBALANCER))
    names = set(re.findall(r'"(KILN_OTEL_(?:COLLECTOR|JAEGER|GATEWAY|SAMPLER)_[A-Z_]+)"', BACKENDS_PY.read_text()))
    assert names
    assert sorted(n for n in names if f"${{env:{n}" not in configs) == []


def _merge(base: Any, over: Any) -> Any:
    """The collector's merge of several --config files: maps merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def _profile(name: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for path in PROFILES[name]:
        cfg = _merge(cfg, _load(path))
    return cfg


def _pipeline_components(cfg: dict[str, Any]) -> dict[str, set[str]]:
    """Component types a config USES: in a pipeline, or as a service extension."""
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    service = cfg["service"]
    used["extensions"] |= {e.split("/", 1)[0] for e in service.get("extensions", [])}
    for pipe in service["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component_id in pipe.get(kind, []):
                assert component_id in cfg[kind], f"pipeline uses undefined {kind[:-1]} {component_id}"
                used[kind].add(component_id.split("/", 1)[0])
    return used


def _used_by_any_profile() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for name in PROFILES:
        for kind, types in _pipeline_components(_profile(name)).items():
            used[kind] |= types
    return used


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"not a duration this test reads: {duration!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_sampler_keeps_failed_runs_by_the_wire_contract_and_waits_for_the_longest_run() -> None:
    from kiln_otel import wire

    cfg = _profile("sampler")
    sampling = cfg["processors"]["tail_sampling"]
    policies = {p["name"]: p for p in sampling["policies"]}
    assert policies["run-failed-status"]["status_code"]["status_codes"] == ["ERROR"]
    [condition] = policies["run-failed-attributes"]["ottl_condition"]["span"]
    assert condition == (
        f'span.attributes["{wire.ATTR_SCHEMA_VERSION}"] != nil and span.attributes["{wire.ATTR_ERROR_TYPE}"] != nil'
    )
    assert policies["run-not-ended"]["not"]["not_sub_policy"]["ottl_condition"]["span"] == ["IsRootSpan()"]
    assert policies["successes-sampled"]["type"] == "probabilistic"
    # docs/pipeline.md: runs of up to 10 minutes are decided on their root, with a minute to spare
    wait = _seconds(_expand(sampling["decision_wait"], {}))
    assert wait >= 11 * 60
    assert 1 <= _seconds(_expand(sampling["decision_wait_after_root_received"], {})) < wait
    assert int(_expand(sampling["decision_cache"]["sampled_cache_size"], {})) > 0, "late spans must follow"
    # decide first (only kept spans are redacted and exported), then redact, then batch
    assert cfg["service"]["pipelines"]["traces"]["processors"] == [
        "memory_limiter",
        "tail_sampling",
        "transform/redact",
        "batch",
    ]


def _main_go_factories() -> dict[str, set[str]]:
    """Factory package names handed to otelcol.MakeFactoryMap, per kind, from main.go."""
    source = MAIN_GO.read_text(encoding="utf-8")
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for field, body in re.findall(r"f\.(\w+), err = otelcol\.MakeFactoryMap\((.*?)\); err", source, re.S):
        found[field.lower()] |= set(re.findall(r"(\w+)\.NewFactory\(\)", body))
    return found


def _types_of(package: str, kind: str) -> set[str]:
    if package in TYPE_ALIASES:
        return TYPE_ALIASES[package]
    suffix = kind[:-1]  # receivers -> receiver
    assert package.endswith(suffix), f"{package} is not a {suffix} package"
    return {package[: -len(suffix)]}


def test_main_go_has_exactly_the_components_the_profiles_use() -> None:
    used = _used_by_any_profile()
    factories = _main_go_factories()
    for kind in KINDS:
        provided = {t.replace("_", "") for pkg in factories[kind] for t in _types_of(pkg, kind)}
        needed = {t.replace("_", "") for t in used[kind]}
        assert needed <= provided, f"{kind}: the profiles use {needed - provided}, main.go lacks them"
        # and nothing more: every factory is used (aliases count once)
        for pkg in factories[kind]:
            types = {t.replace("_", "") for t in _types_of(pkg, kind)}
            assert types & needed, f"{kind}: main.go has {pkg}, no profile uses it"


def test_every_collector_module_is_at_one_release() -> None:
    versions: dict[str, set[str]] = {"core": set(), "stable": set(), "contrib": set()}
    for module, version in re.findall(r"^\s*(\S+) (v\S+)", COLLECTOR_GO_MOD.read_text(), re.M):
        if module.startswith("github.com/open-telemetry/opentelemetry-collector-contrib/"):
            versions["contrib"].add(version)
        elif module.startswith("go.opentelemetry.io/collector"):
            versions["core" if version.startswith("v0.") else "stable"].add(version)
    # contrib v0.161.0 goes with core v0.161.0 and the stable core modules v1.67.0
    assert versions == {"core": {f"v{COLLECTOR_RELEASE}"}, "stable": {"v1.67.0"}, "contrib": {f"v{COLLECTOR_RELEASE}"}}


# ---------------------------------------------------------------------------------------------
# the built binaries


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("cwd", REPO_ROOT)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)


@pytest.mark.backends
@pytest.mark.parametrize("profile", list(PROFILES))
def test_collector_validates_each_profile(backend_binaries: BackendBinaries, profile: str) -> None:
    configs = [arg for path in PROFILES[profile] for arg in ("--config", str(path))]
    result = _run([str(backend_binaries.collector), "validate", *configs])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.backends
def test_jaeger_validates_jaeger_yaml(backend_binaries: BackendBinaries) -> None:
    result = _run([str(backend_binaries.jaeger), "validate", "--config", str(JAEGER)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.backends
def test_built_collector_has_the_components_the_profiles_use(backend_binaries: BackendBinaries) -> None:
    result = _run([str(backend_binaries.collector), "components"])
    assert result.returncode == 0, result.stderr
    listed = yaml.safe_load(result.stdout)
    used = _used_by_any_profile()
    for kind in KINDS:
        have = {c["name"] for c in listed.get(kind) or []}
        assert used[kind] <= have, f"{kind}: binary lacks {used[kind] - have}"
        assert have <= used[kind], f"{kind}: binary has unused {have - used[kind]}"


# ---------------------------------------------------------------------------------------------
# scripts/backends.sh


def test_backends_sh_caches_outside_the_tree_keyed_by_the_build_inputs(tmp_path: Path) -> None:
    env = {**os.environ, "KILN_OTEL_BACKENDS_CACHE": str(tmp_path / "cache")}
    result = _run(["bash", str(REPO_ROOT / "scripts" / "backends.sh"), "paths"], env=env)
    assert result.returncode == 1, "nothing is built in an empty cache"
    printed = [Path(line) for line in result.stdout.splitlines()]
    expected = []
    for name, binary in (("collector", "otelcol-kiln"), ("jaeger", "jaeger")):
        digest = hashlib.sha256()
        for file in ("go.mod", "go.sum", "main.go"):
            path = REPO_ROOT / "backends" / name / file
            if path.exists():
                digest.update(f"{file}\n".encode() + path.read_bytes())
        expected.append(tmp_path / "cache" / f"{name}-{digest.hexdigest()}" / binary)
    assert printed == expected
    assert not any(p.is_relative_to(REPO_ROOT) for p in printed)


def _free_block(size: int) -> int:
    """A base port B such that B+10 .. B+10+size-1 can all be bound on 127.0.0.1 right now."""
    for base in range(20_000, 60_000, 97):
        socks = []
        try:
            for port in range(base + 10, base + 10 + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no free block of ports")


@pytest.mark.backends
def test_backends_sh_runs_the_gateway_as_local_processes(backend_binaries: BackendBinaries, tmp_path: Path) -> None:
    """`scripts/backends.sh run gateway`: a failed demo run reaches Jaeger through it; SIGTERM stops it all."""
    jaeger = dict(zip(("GRPC", "HTTP", "QUERY_HTTP", "QUERY_GRPC", "HEALTH", "METRICS"), free_ports(6)))
    lb_grpc, lb_http, lb_health, lb_metrics = free_ports(4)
    base = _free_block(14)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_OTEL_", "OTEL_"))}
    env |= {f"KILN_OTEL_JAEGER_{k}_ENDPOINT": f"127.0.0.1:{v}" for k, v in jaeger.items() if k != "METRICS"}
    env |= {
        "KILN_OTEL_JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{jaeger['GRPC']}",
        "KILN_OTEL_JAEGER_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{jaeger['HTTP']}",
        "KILN_OTEL_JAEGER_METRICS_PORT": str(jaeger["METRICS"]),
        "KILN_OTEL_GATEWAY_GRPC_ENDPOINT": f"127.0.0.1:{lb_grpc}",
        "KILN_OTEL_GATEWAY_HTTP_ENDPOINT": f"127.0.0.1:{lb_http}",
        "KILN_OTEL_GATEWAY_HEALTH_ENDPOINT": f"127.0.0.1:{lb_health}",
        "KILN_OTEL_GATEWAY_METRICS_PORT": str(lb_metrics),
        "KILN_OTEL_GATEWAY_SAMPLER_BASE_PORT": str(base),
        "KILN_OTEL_GATEWAY_ARCHIVE_DIR": str(tmp_path),
        "KILN_OTEL_SAMPLER_WAIT_AFTER_ROOT": "1s",
    }
    health = [f"http://127.0.0.1:{p}/" for p in (lb_health, base + 12, base + 22)]
    with (tmp_path / "run.log").open("wb") as log:
        script = subprocess.Popen(
            ["bash", str(REPO_ROOT / "scripts" / "backends.sh"), "run", "gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not all(_http_status(url) == 200 for url in health):
            assert script.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.3)
        demo_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{lb_grpc}"}
        demo = _run([str(Path(sys.executable).with_name("kiln-otel")), "demo", "--json"], env=demo_env, cwd=tmp_path)
        assert demo.returncode == 0, demo.stderr
        trace_id = json.loads(demo.stdout)["trace_id"]
        url = f"http://127.0.0.1:{jaeger['QUERY_HTTP']}/api/v3/traces/{trace_id}"
        deadline = time.monotonic() + 30
        while _http_status(url) != 200:
            assert time.monotonic() < deadline, "the failed demo run never reached Jaeger through the gateway"
            time.sleep(0.5)
        assert any(trace_id in p.read_text() for p in tmp_path.glob("kiln-otel-traces-sampler-*.jsonl"))
        script.send_signal(signal.SIGTERM)
        script.wait(timeout=30)
        assert not any(_port_in_use(p) for p in (lb_grpc, base + 10, base + 20, jaeger["QUERY_HTTP"]))
    finally:
        if script.poll() is None or any(_port_in_use(p) for p in (lb_grpc, base + 10, base + 20)):
            os.killpg(script.pid, signal.SIGKILL)
            script.wait(timeout=30)


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
