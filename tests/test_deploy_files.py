"""Dockerfile, compose.yaml and ops/redis.conf agree with the code: settings, commands, pins.

No Docker engine runs here, so the files are read: compose.yaml with a small line-based parser of
the YAML subset it uses (mappings by indentation, `- item` lists, JSON-style flow lists).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import attrs
import pytest

from handwriting_ai.cli import build_parser
from handwriting_ai.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
Node = str | list["Node"] | dict[str, "Node"]
FLAT = {"REDIS_URL", "HANDWRITING_API_URL", "HANDWRITING_API_KEY", "HANDWRITING_AI_CONFIG"}
NOT_OURS = {"PATH", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
NESTED = re.compile(r"\b[A-Z][A-Z0-9]*__[A-Z0-9_]+\b")
FLAT_NAMED = re.compile(r"\b(?:REDIS_URL|HANDWRITING_[A-Z_]+)\b")


# --- a YAML subset ------------------------------------------------------------------------------


def _scalar(text: str) -> Node:
    text = text.strip()
    if text.startswith("["):
        items: object = json.loads(text)
        assert isinstance(items, list)
        return [str(i) for i in items]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            out.append((len(raw) - len(raw.lstrip(" ")), stripped))
    return out


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Node, int]:
    if lines[i][1].startswith("- "):
        items: list[Node] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            items.append(_scalar(lines[i][1][2:]))
            i += 1
        return items, i
    mapping: dict[str, Node] = {}
    while i < len(lines) and lines[i][0] == indent:
        key, sep, rest = lines[i][1].partition(":")
        assert sep, f"not a mapping line: {lines[i][1]!r}"
        i += 1
        if rest.strip():
            mapping[key.strip()] = _scalar(rest)
        elif i < len(lines) and lines[i][0] > indent:
            mapping[key.strip()], i = _block(lines, i, lines[i][0])
        else:
            mapping[key.strip()] = ""
    return mapping, i


def parse_yaml(text: str) -> dict[str, Node]:
    lines = _lines(text)
    node, end = _block(lines, 0, 0)
    assert end == len(lines), f"unparsed from line {lines[end]!r}"
    assert isinstance(node, dict)
    return node


def _map(node: Node | None) -> dict[str, Node]:
    assert isinstance(node, dict), node
    return node


def _strs(node: Node | None) -> list[str]:
    assert isinstance(node, list), node
    assert all(isinstance(i, str) for i in node), node
    return [str(i) for i in node]


def _str(node: Node | None) -> str:
    assert isinstance(node, str), node
    return node


def test_the_yaml_subset_parser() -> None:
    doc = parse_yaml('a:\n  b: "1"\n  c: ["x", "y"]\n  d:\n    - e:f\n# note\ng:\n')
    assert doc == {"a": {"b": "1", "c": ["x", "y"], "d": ["e:f"]}, "g": ""}


# --- the Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    current = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def _final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    starts = [i for i, (name, _) in enumerate(instructions) if name == "FROM"]
    assert len(starts) >= 2, "multi-stage: a build stage and a runtime stage"
    return instructions[starts[-1] :]


def _env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in stage:
        if name == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b(torch|torchvision)==([0-9][0-9A-Za-z.+]*)", text))


def test_torch_pins_match_pyproject_and_come_from_the_cpu_index() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(" ".join(project["dependencies"]))
    assert set(wanted) == {"torch", "torchvision"}
    runs = [args for name, args in dockerfile_instructions() if name == "RUN"]
    torch_runs = [args for args in runs if "torch==" in args]
    assert len(torch_runs) == 1
    assert _pins(torch_runs[0]) == wanted
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_runs[0]


def test_the_runtime_stage_is_small_non_root_and_healthchecked() -> None:
    stage = _final_stage()
    names = [name for name, _ in stage]
    assert "slim" in stage[0][1]
    users = [args for name, args in stage if name == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    assert not any("build-essential" in args for _, args in stage)
    env = _env_of(stage)
    port = env["APP__PORT"]
    assert [args for name, args in stage if name == "EXPOSE"] == [port]
    [health] = [args for name, args in stage if name == "HEALTHCHECK"]
    command = health.split(" CMD ", 1)[1]
    probe = " ".join(_strs(_scalar(command)))
    assert "/healthz" in probe
    assert "APP__PORT" in probe  # the port the API listens on
    assert f"'{port}'" in probe  # with the image's default
    assert names[-1] == "CMD"
    assert _strs(_scalar(stage[-1][1]))[:2] == ["digits", "serve"]


def _setting_exists(name: str) -> bool:
    """`SECTION__FIELD` is a field of that section of `Settings`; a few names are flat."""
    if name in FLAT:
        return True
    section, sep, field_name = name.lower().partition("__")
    if not sep or section not in attrs.fields_dict(Settings):
        return False
    section_value: object = getattr(Settings(), section)
    section_type = type(section_value)
    return attrs.has(section_type) and field_name in attrs.fields_dict(section_type)


def test_setting_names_are_checked_against_the_settings_class() -> None:
    assert _setting_exists("APP__PORT")
    assert _setting_exists("STREAMS__SHUTDOWN_GRACE_S")
    assert _setting_exists("REDIS_URL")
    assert not _setting_exists("APP__PROT")
    assert not _setting_exists("NOPE__PORT")


def _named_settings(text: str) -> set[str]:
    return set(NESTED.findall(text)) | set(FLAT_NAMED.findall(text))


@pytest.mark.parametrize("name", ["Dockerfile", "compose.yaml"])
def test_every_setting_named_in_a_deploy_file_exists(name: str) -> None:
    text = (ROOT / name).read_text()
    named = _named_settings(text)
    assert named, "the file names settings"
    unknown = sorted(n for n in named if not _setting_exists(n))
    assert unknown == []


def test_dockerfile_env_is_settings_or_python_and_loads() -> None:
    env = _env_of(_final_stage())
    assert {k for k in env if not _setting_exists(k)} <= NOT_OURS
    ours = {k: v for k, v in env.items() if _setting_exists(k)}
    settings = load_settings(ours)  # the values are valid, not only the names
    assert settings.app.port == int(env["APP__PORT"])
    assert str(settings.model_dir) == env["DIGITS__MODEL_DIR"]


# --- compose.yaml -------------------------------------------------------------------------------


def compose() -> dict[str, Node]:
    return parse_yaml((ROOT / "compose.yaml").read_text())


def test_compose_has_redis_api_and_a_scalable_worker() -> None:
    services = _map(compose()["services"])
    assert set(services) == {"redis", "api", "worker"}
    worker = _map(services["worker"])
    assert "container_name" not in worker  # --scale worker=N needs both
    assert "ports" not in worker
    assert set(_map(compose()["volumes"])) >= {"data", "models", "redis-data"}


def test_compose_redis_persists_with_aof_and_is_healthchecked() -> None:
    redis = _map(_map(compose()["services"])["redis"])
    assert _str(redis["image"]).startswith("redis:7")
    command = _strs(redis["command"])
    conf = (ROOT / "ops" / "redis.conf").read_text()
    mounted = [v for v in _strs(redis["volumes"]) if v.startswith("./ops/redis.conf:")]
    assert len(mounted) == 1
    assert mounted[0].split(":")[1] in command
    assert re.search(r"^appendonly yes$", conf, re.M)
    assert "--appendonly" not in command or command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in _strs(redis["volumes"]))
    assert "redis-cli" in _strs(_map(redis["healthcheck"])["test"])


def test_redis_conf_never_evicts_and_explains_trimming() -> None:
    conf = (ROOT / "ops" / "redis.conf").read_text()
    directives = {
        line.split()[0]: line.split(None, 1)[1]
        for line in conf.splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    assert "MAXLEN ~" in conf
    assert "MINID" in conf


def test_compose_commands_exist_in_the_cli() -> None:
    parser = build_parser()
    services = _map(compose()["services"])
    for name in ("api", "worker"):
        command = _strs(_map(services[name])["command"])
        assert command[0] == "digits"
        parser.parse_args(command[1:])  # exits (fails the test) on an unknown command or option
    instructions = dockerfile_instructions()
    [cmd] = [args for name, args in instructions if name == "CMD"]
    parser.parse_args(_strs(_scalar(cmd))[1:])


def test_compose_environment_is_real_settings_that_load() -> None:
    services = _map(compose()["services"])
    for name in ("api", "worker"):
        env = {k: _str(v) for k, v in _map(_map(services[name])["environment"]).items()}
        assert all(_setting_exists(k) for k in env), sorted(env)
        concrete = {k: v for k, v in env.items() if "${" not in v}
        load_settings(concrete)  # the values are valid too
    api_env = _map(_map(services["api"])["environment"])
    worker_env = _map(_map(services["worker"])["environment"])
    assert _str(api_env["REDIS_URL"]) == _str(worker_env["REDIS_URL"])
    assert _str(worker_env["HANDWRITING_API_URL"]) == f"http://api:{_str(api_env['APP__PORT'])}"
    # workers upload with the key the API checks
    assert "SECURITY__API_KEY" in _str(worker_env["HANDWRITING_API_KEY"])
    assert "SECURITY__API_KEY" in _str(api_env["SECURITY__API_KEY"])
    ports = _strs(_map(services["api"])["ports"])
    assert ports == [f"{_str(api_env['APP__PORT'])}:{_str(api_env['APP__PORT'])}"]


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "data", ".git"} <= ignored
    assert "models" not in ignored
    assert "src" not in ignored
