"""Tests for the hosts file: search order, defaults, and that every mistake is reported usefully.

Error tests check that the message names the file and the dotted key, because that is what lets
a user find and fix the mistake without reading this package's code.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from remote_magic.config import hosts as config
from remote_magic.config.hosts import (
    HOST_KEYS,
    RESOURCE_KEYS,
    SCHEDULERS,
    Config,
    HostConfig,
    check_resources,
    find_config_file,
    job_resources,
    load_config,
    parse_config,
)
from remote_magic.errors import ConfigError, OptionError, UnknownHostError

FULL_EXAMPLE = """\
default: hpc
hosts:
  hpc:
    address: me@login.cluster.edu   # or an alias from ~/.ssh/config
    port: 22
    identity_file: ~/.ssh/id_ed25519
    proxy_jump: me@bastion.cluster.edu
    known_hosts: ~/.ssh/known_hosts
    scheduler: slurm
    python: /opt/conda/envs/sci/bin/python
    workdir: ~/.remote_magic
    setup: |
      module load python/3.11
    paths: {/home/me/project: /scratch/me/project}
    resources: {partition: normal, walltime: "1:00:00"}
    max_running: 50
    template: null
"""

FILE = Path("/cfg/hosts.yaml")


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text), FILE)


def parse_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def assert_names(err: ConfigError, key: str | None) -> str:
    """The message starts with the file and, for checks on a value, the dotted key."""
    message = str(err)
    assert err.path == FILE
    assert message.startswith(f"{FILE}: ")
    if key is not None:
        assert err.key == key
        assert f"key '{key}'" in message
    return message


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """No environment variable, an empty working directory, a private user config directory."""
    cwd = tmp_path / "cwd"
    user_dir = tmp_path / "user-config"
    cwd.mkdir()
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    monkeypatch.chdir(cwd)
    calls = []

    def fake_user_config_dir(appname: str, *args: object, **kwargs: object) -> str:
        calls.append(appname)
        return str(user_dir)

    monkeypatch.setattr(config.platformdirs, "user_config_dir", fake_user_config_dir)
    return {
        "cwd": cwd / "remote_magic.yaml",
        "user": user_dir / "hosts.yaml",
        "env": tmp_path / "elsewhere" / "named.yaml",
        "calls": calls,  # type: ignore[dict-item]
    }


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# The public shape


def test_constants_match_the_spec() -> None:
    assert SCHEDULERS == ("process", "slurm", "pbs", "lsf", "sge")
    assert RESOURCE_KEYS == ("walltime", "cores", "mem", "nodes", "gpus", "partition", "account")
    assert "name" not in HOST_KEYS
    assert set(HOST_KEYS) == {
        "address", "port", "identity_file", "proxy_jump", "known_hosts", "scheduler", "python",
        "workdir", "setup", "paths", "resources", "max_running", "template", "auto_files",
        "warm", "transport", "scheduler_poll", "status_interval",
    }


def test_host_config_defaults_and_is_local() -> None:
    host = HostConfig(name="x")
    assert host.is_local
    assert host.scheduler == "process"
    assert host.workdir == "~/.remote_magic"
    assert host.python is None and host.port is None and host.template is None
    assert host.setup == "" and dict(host.paths) == {} and dict(host.resources) == {}
    assert not HostConfig(name="y", address="me@there").is_local


def test_configs_are_frozen() -> None:
    cfg = parse(FULL_EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.default = "localhost"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.host().address = "other"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# Happy paths


def test_full_example_is_read_as_written() -> None:
    cfg = parse(FULL_EXAMPLE)
    assert cfg.path == FILE
    assert cfg.default == "hpc"
    assert list(cfg.hosts) == ["hpc", "localhost"]
    assert cfg.host("hpc") == HostConfig(
        name="hpc",
        address="me@login.cluster.edu",
        port=22,
        identity_file="~/.ssh/id_ed25519",  # not expanded here
        proxy_jump="me@bastion.cluster.edu",
        known_hosts="~/.ssh/known_hosts",
        scheduler="slurm",
        python="/opt/conda/envs/sci/bin/python",
        workdir="~/.remote_magic",
        setup="module load python/3.11\n",
        paths={"/home/me/project": "/scratch/me/project"},
        resources={"partition": "normal", "walltime": "1:00:00"},
        max_running=50,
        template=None,
    )
    assert not cfg.host("hpc").is_local
    assert cfg.host() is cfg.hosts["hpc"]


def test_every_scheduler_and_resource_is_accepted() -> None:
    for scheduler in SCHEDULERS:
        cfg = parse(f"hosts: {{h: {{scheduler: {scheduler}}}}}")
        assert cfg.host("h").scheduler == scheduler
    cfg = parse(
        """\
        hosts:
          h:
            resources:
              walltime: 2-00:00:00
              cores: 8
              mem: 16GB
              nodes: 2
              gpus: 1
              partition: gpu
              account: "0123"
        """
    )
    assert cfg.host("h").resources == {
        "walltime": "2-00:00:00", "cores": 8, "mem": "16GB", "nodes": 2, "gpus": 1,
        "partition": "gpu", "account": "0123",
    }


@pytest.mark.parametrize("walltime", ["1:00:00", "90", "30:00", "1-12", "1-12:30:00"])
def test_walltime_formats(walltime: str) -> None:
    cfg = parse(f'hosts: {{h: {{resources: {{walltime: "{walltime}"}}}}}}')
    assert cfg.host("h").resources["walltime"] == walltime


def test_unquoted_walltime_stays_a_string() -> None:
    # Plain YAML 1.1 would read 1:00:00 as the base-60 number 3600.
    cfg = parse(
        """\
        hosts:
          h:
            resources:
              walltime: 1:00:00
          k: {resources: {walltime: 10:00}}
        """
    )
    assert cfg.host("h").resources == {"walltime": "1:00:00"}
    assert cfg.host("k").resources == {"walltime": "10:00"}


@pytest.mark.parametrize("mem", ['"4G"', '"500M"', '"1.5GiB"', '"4gb"', "4096"])
def test_memory_formats(mem: str) -> None:
    parse(f"hosts: {{h: {{resources: {{mem: {mem}}}}}}}")


def test_numbers_stay_numbers_and_walltime_may_be_minutes() -> None:
    cfg = parse("hosts: {h: {resources: {walltime: 90, mem: 4096}}}")
    assert cfg.host("h").resources == {"walltime": 90, "mem": 4096}


def test_scheduler_name_is_case_insensitive() -> None:
    assert parse("hosts: {h: {scheduler: SLURM}}").host("h").scheduler == "slurm"


def test_null_values_mean_the_default() -> None:
    cfg = parse(
        """\
        hosts:
          h:
            address:
            scheduler: null
            workdir: ~
            setup:
            paths:
            resources: {cores: null}
            port:
        """
    )
    assert cfg.host("h") == HostConfig(name="h")


def test_host_without_settings_is_a_local_host() -> None:
    cfg = parse("hosts:\n  box:\n")
    assert cfg.host("box") == HostConfig(name="box")
    assert cfg.host("box").is_local


def test_local_host_with_a_scheduler() -> None:
    host = parse("hosts: {cluster: {scheduler: pbs}}").host("cluster")
    assert host.is_local and host.scheduler == "pbs"


@pytest.mark.parametrize("name", ["a", "hpc", "A1", "my-host", "node_01", "login.cluster.edu",
                                  "9lives"])
def test_valid_host_names(name: str) -> None:
    assert parse(f"hosts: {{{name}: {{}}}}").host(name).name == name


def test_merge_keys_share_settings_between_hosts() -> None:
    cfg = parse(
        """\
        hosts:
          a: &base
            scheduler: slurm
            python: /opt/py
          b:
            <<: *base
            address: me@b
            python: /other/py
        """
    )
    assert cfg.host("b").scheduler == "slurm"
    assert cfg.host("b").python == "/other/py"
    assert cfg.host("b").address == "me@b"


# ------------------------------------------------------------------------------------------
# localhost and the default host


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "hosts:\n", "hosts: {}\n",
                                  "hosts: null\n", "default:\nhosts:\n"])
def test_empty_files_give_only_localhost(text: str) -> None:
    cfg = parse(text)
    assert cfg.default == "localhost"
    assert list(cfg.hosts) == ["localhost"]
    assert cfg.host() == HostConfig(name="localhost", scheduler="process")


def test_localhost_is_added_when_not_defined() -> None:
    cfg = parse("hosts: {hpc: {address: me@hpc}}")
    assert set(cfg.hosts) == {"hpc", "localhost"}
    assert cfg.default == "localhost"
    assert cfg.host().name == "localhost"
    assert cfg.host("localhost").is_local


def test_localhost_entry_overrides_the_embedded_default() -> None:
    cfg = parse("hosts: {localhost: {workdir: /tmp/rm, max_running: 4}}")
    local = cfg.host("localhost")
    assert local.workdir == "/tmp/rm"
    assert local.max_running == 4
    assert local.scheduler == "process" and local.is_local
    assert list(cfg.hosts) == ["localhost"]


def test_default_may_name_localhost_explicitly() -> None:
    cfg = parse("default: localhost\nhosts: {hpc: {address: x}}")
    assert cfg.host().name == "localhost"


def test_default_must_name_a_defined_host() -> None:
    err = parse_error("default: hcp\nhosts: {hpc: {address: x}, other: {}}")
    message = assert_names(err, "default")
    assert "'hcp'" in message
    assert "did you mean 'hpc'?" in message
    assert "hpc, localhost, other" in message


@pytest.mark.parametrize("value", ["[a]", "3", "{a: 1}"])
def test_default_must_be_a_host_name(value: str) -> None:
    message = assert_names(parse_error(f"default: {value}\nhosts: {{a: {{}}}}"), "default")
    assert "a, localhost" in message


def test_unknown_host_lists_the_known_ones() -> None:
    cfg = parse(FULL_EXAMPLE)
    with pytest.raises(UnknownHostError) as info:
        cfg.host("nope")
    err = info.value
    assert err.name == "nope"
    assert sorted(err.known) == ["hpc", "localhost"]
    assert str(FILE) in str(err)
    assert "hpc, localhost" in str(err)


def test_unknown_host_without_a_file() -> None:
    with pytest.raises(UnknownHostError) as info:
        parse_config("").host("hpc")
    assert info.value.known == ["localhost"]


# ------------------------------------------------------------------------------------------
# Structure errors


@pytest.mark.parametrize("text,shown", [("- a\n- b\n", "a list"), ("just text\n", "a string"),
                                        ("42\n", "an integer")])
def test_top_level_must_be_a_mapping(text: str, shown: str) -> None:
    message = assert_names(parse_error(text), None)
    assert "'default' and 'hosts'" in message
    assert shown in message


def test_unknown_top_level_key_is_named_with_a_suggestion() -> None:
    err = parse_error("host:\n  hpc: {}\n")
    message = assert_names(err, "host")
    assert "did you mean 'hosts'?" in message
    assert "default, hosts" in message
    assert "(line 1)" in message


def test_hosts_must_be_a_mapping() -> None:
    message = assert_names(parse_error("hosts:\n  - hpc\n"), "hosts")
    assert "mapping" in message and "a list" in message


def test_host_settings_must_be_a_mapping() -> None:
    message = assert_names(parse_error("hosts:\n  hpc: me@login\n"), "hosts.hpc")
    assert "a string ('me@login')" in message
    assert "address" in message


def test_unknown_host_key_suggests_the_closest() -> None:
    err = parse_error(
        """\
        hosts:
          hpc:
            port: 22
            adress: me@login
        """
    )
    message = assert_names(err, "hosts.hpc.adress")
    assert "unknown key 'adress'" in message
    assert "did you mean 'address'?" in message
    for key in HOST_KEYS:
        assert key in message
    assert "(line 4)" in message


def test_unknown_key_without_a_close_match_lists_the_valid_ones() -> None:
    message = assert_names(parse_error("hosts: {hpc: {frobnicate: 1}}"), "hosts.hpc.frobnicate")
    assert "did you mean" not in message
    assert "Valid keys here: address, port," in message


def test_name_is_not_a_setting() -> None:
    assert_names(parse_error("hosts: {hpc: {name: other}}"), "hosts.hpc.name")


def test_unknown_resource_key_suggests_the_closest() -> None:
    err = parse_error(
        """\
        hosts:
          hpc:
            resources:
              partition: normal
              memory: 4G
        """
    )
    message = assert_names(err, "hosts.hpc.resources.memory")
    assert "did you mean 'mem'?" in message
    assert ", ".join(RESOURCE_KEYS) in message
    assert "(line 5)" in message


@pytest.mark.parametrize("name", ["-x", ".hidden", "_x", "my host", "a/b", "a:b", "é", "a*"])
def test_invalid_host_names(name: str) -> None:
    err = parse_error(f'hosts: {{"{name}": {{}}}}')
    message = assert_names(err, f"hosts.{name}")
    assert "letter or digit" in message


def test_host_name_must_be_a_string() -> None:
    message = assert_names(parse_error("hosts: {123: {}}"), "hosts.123")
    assert "123" in message


def test_empty_host_name() -> None:
    assert_names(parse_error('hosts: {"": {}}'), "hosts.")


# ------------------------------------------------------------------------------------------
# Value errors


@pytest.mark.parametrize(
    "setting,key,expected",
    [
        ("port: '22'", "port", "without quotes"),
        ("port: 0", "port", "from 1 to 65535"),
        ("port: 70000", "port", "from 1 to 65535"),
        ("port: true", "port", "a boolean"),
        ("port: 22.5", "port", "a number"),
        ("max_running: 0", "max_running", "at least 1"),
        ("max_running: -3", "max_running", "at least 1"),
        ("max_running: 1.5", "max_running", "whole number"),
        ("max_running: many", "max_running", "a string"),
        ("scheduler: slrum", "scheduler", "did you mean 'slurm'?"),
        ("scheduler: kubernetes", "scheduler", "process, slurm, pbs, lsf, sge"),
        ("scheduler: 5", "scheduler", "must be a string"),
        ("scheduler_poll: fast", "scheduler_poll", "such as \"30s\""),
        ("scheduler_poll: 0.5", "scheduler_poll", "from 1 second to 1 hour"),
        ("scheduler_poll: 2h", "scheduler_poll", "from 1 second to 1 hour"),
        ("scheduler_poll: true", "scheduler_poll", "a number of seconds"),
        ("transport: openshh", "transport", "did you mean 'openssh'?"),
        ("transport: telnet", "transport", "'paramiko' (the default, built in) or 'openssh'"),
        ("transport: [openssh]", "transport", "a list"),
        ("address: ''", "address", "must not be empty"),
        ("address: 123", "address", "in quotes"),
        ("address: [a, b]", "address", "a list"),
        ("identity_file: yes", "identity_file", "a boolean"),
        ("proxy_jump: {a: b}", "proxy_jump", "a mapping"),
        ("known_hosts: 1", "known_hosts", "must be a string"),
        ("python: 3.11", "python", "in quotes"),
        ("workdir: '  '", "workdir", "must not be empty"),
        ("setup: [module load x]", "setup", "setup: |"),
        ("template: 3", "template", "must be a string"),
        ("paths: [/a, /b]", "paths", "local path prefix"),
        ("paths: /home/me", "paths", "a string"),
        ("resources: [cores]", "resources", "mapping"),
    ],
)
def test_wrong_host_values(setting: str, key: str, expected: str) -> None:
    err = parse_error(f"hosts:\n  hpc:\n    {setting}\n")
    message = assert_names(err, f"hosts.hpc.{key}")
    assert expected in message
    assert "(line 3)" in message


@pytest.mark.parametrize(
    "paths,key,expected",
    [
        ("{/home/me: 3}", "hosts.hpc.paths./home/me", "must be a string"),
        ("{/home/me: }", "hosts.hpc.paths./home/me", "null"),
        ("{/home/me: [a]}", "hosts.hpc.paths./home/me", "a list"),
        ("{1: /remote}", "hosts.hpc.paths.1", "local path prefix"),
    ],
)
def test_paths_map_strings_to_strings(paths: str, key: str, expected: str) -> None:
    message = assert_names(parse_error(f"hosts: {{hpc: {{paths: {paths}}}}}"), key)
    assert expected in message


@pytest.mark.parametrize(
    "resource,expected",
    [
        ("cores: 0", "from 1 to"),
        ("cores: -2", "from 1 to"),
        ("cores: '4'", "without quotes"),
        ("nodes: 1.5", "whole number"),
        ("gpus: true", "a boolean"),
        ("walltime: 1h", "hours:minutes:seconds"),
        ("walltime: 0", "hours:minutes:seconds"),
        ("mem: lots", "\"4G\""),
        ("mem: -1", "megabytes"),
        ("partition: 5", "must be a string"),
        ("account: 0123", "in quotes"),
        ("account: ''", "must not be empty"),
        ("partition: 'gpu long'", "one word"),
        ('partition: "gpu\\necho injected"', "one word"),
        ("account: a#b", "one word"),
    ],
)
def test_wrong_resource_values(resource: str, expected: str) -> None:
    name = resource.split(":")[0]
    err = parse_error(f"hosts:\n  hpc:\n    resources:\n      {resource}\n")
    message = assert_names(err, f"hosts.hpc.resources.{name}")
    assert expected in message
    assert "(line 4)" in message


def test_a_batch_hosts_workdir_must_fit_in_a_directive_line() -> None:
    message = assert_names(parse_error("hosts:\n  hpc:\n    scheduler: slurm\n"
                                       "    workdir: /home/me/my work\n"),
                           "hosts.hpc.workdir")
    assert "directive lines" in message and "choose a directory" in message
    # a process host runs no directives: any directory will do
    assert parse_config("hosts: {pc: {workdir: /home/me/my work}}").host("pc").workdir \
        == "/home/me/my work"


def test_messages_without_a_file_still_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("hosts: {hpc: {port: 0}}")
    assert str(info.value).startswith("key 'hosts.hpc.port': ")
    assert info.value.path is None


# ------------------------------------------------------------------------------------------
# YAML errors


def test_syntax_error_gives_file_line_and_column() -> None:
    err = parse_error(
        """\
        hosts:
          hpc:
            address: me@login
           port: 22
        """
    )
    message = assert_names(err, None)
    assert "invalid YAML at line 4, column" in message


def test_unclosed_flow_mapping() -> None:
    message = assert_names(parse_error("hosts: {hpc: {address: x}\n"), None)
    assert "invalid YAML at line 2, column 1" in message


def test_tab_indentation_is_reported_with_its_position() -> None:
    message = assert_names(parse_error("hosts:\n\thpc: {}\n"), None)
    assert "line 2, column 1" in message
    assert "tab" in message


def test_duplicate_keys_are_an_error() -> None:
    err = parse_error(
        """\
        hosts:
          hpc:
            address: a
          hpc:
            address: b
        """
    )
    message = assert_names(err, None)
    assert "line 4, column 3" in message
    assert "'hpc' appears twice" in message
    assert "first on line 2" in message


def test_several_documents_are_an_error() -> None:
    message = assert_names(parse_error("hosts: {}\n---\nhosts: {}\n"), None)
    assert "invalid YAML at line 2" in message


def test_unsafe_tags_are_refused() -> None:
    message = assert_names(parse_error("hosts: !!python/object:os.system {}\n"), None)
    assert "invalid YAML at line 1" in message


def test_control_characters_are_reported_with_their_position() -> None:
    message = assert_names(parse_error("hosts:\n  a\x00: {}\n"), None)
    assert "line 2, column 4" in message


# ------------------------------------------------------------------------------------------
# Finding the file


def test_no_file_anywhere(places: dict[str, Path]) -> None:
    assert find_config_file() is None
    cfg = load_config()
    assert cfg.path is None
    assert cfg.default == "localhost"
    assert list(cfg.hosts) == ["localhost"]
    assert cfg.host() == HostConfig(name="localhost")
    assert set(places["calls"]) == {"remote_magic"}  # type: ignore[arg-type]


def test_user_config_dir_is_used_last(places: dict[str, Path]) -> None:
    write(places["user"], "default: u\nhosts: {u: {}}\n")
    assert find_config_file() == places["user"]
    assert load_config().default == "u"
    assert load_config().path == places["user"]


def test_working_directory_wins_over_user_dir(places: dict[str, Path]) -> None:
    write(places["user"], "default: u\nhosts: {u: {}}\n")
    write(places["cwd"], "default: c\nhosts: {c: {}}\n")
    assert find_config_file() == places["cwd"]
    assert find_config_file().is_absolute()  # type: ignore[union-attr]
    assert load_config().default == "c"


def test_environment_variable_wins_over_everything(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(places["user"], "default: u\nhosts: {u: {}}\n")
    write(places["cwd"], "default: c\nhosts: {c: {}}\n")
    write(places["env"], "default: e\nhosts: {e: {}}\n")
    monkeypatch.setenv(config.ENV_VAR, str(places["env"]))
    assert find_config_file() == places["env"]
    cfg = load_config()
    assert cfg.default == "e"
    assert cfg.path == places["env"]


def test_environment_variable_naming_a_missing_file_is_an_error(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(places["cwd"], "hosts: {c: {}}\n")  # must not be used as a fallback
    monkeypatch.setenv(config.ENV_VAR, str(places["env"]))
    for call in (find_config_file, load_config):
        with pytest.raises(ConfigError) as info:
            call()
        assert info.value.path == places["env"]
        assert str(info.value).startswith(f"{places['env']}: ")
        assert config.ENV_VAR in str(info.value)


def test_empty_environment_variable_counts_as_unset(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(places["cwd"], "hosts: {c: {}}\n")
    monkeypatch.setenv(config.ENV_VAR, "")
    assert find_config_file() == places["cwd"]


def test_environment_variable_expands_home(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write(tmp_path / "home" / "my.yaml", "hosts: {h: {}}\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(config.ENV_VAR, "~/my.yaml")
    assert find_config_file() == tmp_path / "home" / "my.yaml"


def test_user_config_file_uses_platformdirs(places: dict[str, Path]) -> None:
    assert config.user_config_file() == places["user"]


# ------------------------------------------------------------------------------------------
# Loading a given file


def test_load_config_with_an_explicit_path(places: dict[str, Path], tmp_path: Path) -> None:
    write(places["cwd"], "hosts: {ignored: {}}\n")
    given = write(tmp_path / "given.yaml", FULL_EXAMPLE)
    for path in (given, str(given)):
        cfg = load_config(path)
        assert cfg.path == given
        assert cfg.default == "hpc"
        assert "ignored" not in cfg.hosts


def test_errors_from_a_loaded_file_name_it(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "hosts:\n  hpc:\n    adress: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: key 'hosts.hpc.adress': ")
    assert "did you mean 'address'?" in str(info.value)


def test_missing_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert "no such file" in str(info.value)


def test_directory_is_an_error(places: dict[str, Path]) -> None:
    places["cwd"].mkdir()  # a directory called remote_magic.yaml
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.path == places["cwd"]
    assert str(info.value).startswith(f"{places['cwd']}: ")
    assert "directory" in str(info.value)


def test_unreadable_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "secret.yaml", "hosts: {}\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert "permission denied" in str(info.value)


def test_other_os_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "flaky.yaml", "hosts: {}\n")

    def broken(self: Path) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_bytes", broken)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot be read: Input/output error"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"hosts:\n  h: {setup: caf\xe9}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert "UTF-8" in str(info.value) and "line 2" in str(info.value)


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfdefault: h\nhosts: {h: {}}\n")
    assert load_config(path).default == "h"


def test_file_is_read_once_and_nothing_else_is_touched(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(places["cwd"], FULL_EXAMPLE)
    reads: list[Path] = []
    real_read_bytes = Path.read_bytes

    def counting_read_bytes(self: Path) -> bytes:
        reads.append(self)
        return real_read_bytes(self)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading the configuration must not open sockets or run commands")

    monkeypatch.setattr(Path, "read_bytes", counting_read_bytes)
    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(subprocess, "Popen", no_network)
    cfg = load_config()
    assert cfg.host().address == "me@login.cluster.edu"
    assert reads == [places["cwd"]]


# ------------------------------------------------------------------------------------------
# Times and amounts a scheduler would read otherwise, and resources it would refuse


@pytest.mark.parametrize("walltime,why", [
    ("0", "longer than zero"),
    ("0:00:00", "longer than zero"),
    ("0-0", "longer than zero"),
    ("1:99", "seconds must be below 60"),
    ("1:60:00", "minutes must be below 60"),
    ("1-25:00:00", "hours after the days must be below 24"),
    ("99999999999", "longer than 365 days"),
    ("366-00:00:00", "longer than 365 days"),
    ("9" * 40, "not a duration"),
    ("1h", "not a duration"),
    ("-5", "not a duration"),
])
def test_walltimes_that_slurm_would_turn_into_another_time_are_refused(
        walltime: str, why: str) -> None:
    """SLURM takes 0 for UNLIMITED, reads 1:99 as 2:39 and wraps huge numbers: refused here,
    in a cell's options and in a hosts file alike, with what is wrong."""
    with pytest.raises(OptionError) as info:
        check_resources({"walltime": walltime})
    assert why in str(info.value) and "hours:minutes:seconds" in str(info.value)
    text = f'hosts: {{hpc: {{resources: {{walltime: "{walltime}"}}}}}}'
    message = assert_names(parse_error(text), "hosts.hpc.resources.walltime")
    assert why in message


@pytest.mark.parametrize("walltime", ["1:00:00", "90", "0:30", "2-00:00:00", "1-23:59:59",
                                      "365-00:00:00", 1, 60 * 24 * 365])
def test_walltimes_a_scheduler_reads_as_written_are_kept(walltime: str | int) -> None:
    assert check_resources({"walltime": walltime}) == {"walltime": walltime}


@pytest.mark.parametrize("mem,why", [
    ("0", "more than zero"), ("0G", "more than zero"), (0, "more than zero"),
    ("0.1K", "whole number of bytes"), ("99999999P", "more than any machine"),
])
def test_memory_a_scheduler_cannot_grant_is_refused(mem: str | int, why: str) -> None:
    with pytest.raises(OptionError) as info:
        check_resources({"mem": mem})
    assert why in str(info.value)


def test_counts_beyond_any_machine_are_refused() -> None:
    with pytest.raises(OptionError) as info:
        check_resources({"cores": 10 ** 30})
    assert "cores must be a whole number from 1 to" in str(info.value)


def test_warm_is_a_switch() -> None:
    assert parse("hosts: {hpc: {address: h}}").host("hpc").warm is True
    assert parse("hosts: {hpc: {address: h, warm: false}}").host("hpc").warm is False
    with pytest.raises(ConfigError, match="must be true or false.*without quotes"):
        parse('hosts: {hpc: {address: h, warm: "false"}}')
    with pytest.raises(ConfigError, match="must be true or false"):
        parse("hosts: {hpc: {address: h, warm: 1}}")


def test_auto_files_of_zero_in_any_unit_turns_staging_off() -> None:
    assert parse('hosts: {hpc: {auto_files: "0M"}}').host("hpc").auto_files == 0


@pytest.mark.parametrize("scheduler,resources,why", [
    ("lsf", '{walltime: "1:00:30"}', "whole minutes"),
    ("sge", "{nodes: 2}", "not nodes"),
])
def test_host_resources_its_scheduler_would_refuse_fail_when_the_file_is_read(
        scheduler: str, resources: str, why: str) -> None:
    """Defaults a scheduler refuses would fail every task of the host, each after staging."""
    message = assert_names(
        parse_error(f"hosts: {{hpc: {{scheduler: {scheduler}, resources: {resources}}}}}"),
        "hosts.hpc.resources")
    assert why in message and f"({scheduler})" in message


def test_a_cells_resources_are_checked_by_the_hosts_scheduler() -> None:
    host = parse("hosts: {hpc: {scheduler: lsf}}").host("hpc")
    with pytest.raises(OptionError) as info:
        job_resources(host, {"walltime": "0:10:30"})
    assert "host 'hpc' (lsf) cannot take these resources" in str(info.value)
    assert job_resources(host, {"walltime": "0:10:00"}) == {"walltime": "0:10:00"}


# ------------------------------------------------------------------------------------------
# Files built to hang the loader or flood the notebook


def _alias_bomb(levels: int, under: str = "default") -> str:
    """A list of nine aliases of a list of nine aliases..., `levels` deep: 9**levels values."""
    items = ", ".join(["x"] * 9)
    lists = [f"&a0 [{items}]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return f"{under}: [{', '.join(lists)}]\n"


def test_an_alias_bomb_is_refused_at_once_in_little_memory() -> None:
    """415 bytes that stand for 387 million values: loading them took 6 GB and never ended."""
    text = _alias_bomb(9)
    assert len(text) < 500
    started = time.monotonic()
    message = assert_names(parse_error(text), None)
    assert time.monotonic() - started < 1
    assert "more than 100,000 values" in message and "line 1" in message and len(message) < 300


def test_merge_keys_cannot_multiply_either() -> None:
    lines = ["hosts:", "  h0: &a0 {address: x}"]
    for i in range(1, 25):
        lines += [f"  h{i}: &a{i}", f"    <<: [*a{i - 1}, *a{i - 1}]"]
    started = time.monotonic()
    assert "more than 100,000 values" in str(parse_error("\n".join(lines)))
    assert time.monotonic() - started < 1


def test_an_alias_inside_its_own_value_is_refused() -> None:
    for text in ("default: &a [*a]", "hosts: &h {hpc: *h}", "hosts: {h: &s {<<: *s}}"):
        assert "inside its own value" in str(parse_error(text)), text


def test_a_value_quoted_in_a_message_is_bounded() -> None:
    """A 329-byte file made a 39 MB message; whatever a file holds, a message stays short."""
    big = "x" * 100_000
    cases = [
        _alias_bomb(5),  # 59,049 values: under the alias bound, so the echo must be bounded
        f"default: {big}\n",
        f"hosts:\n  ? {big}\n  : {{}}\n",  # (a key this long must be written as "? key")
        f"hosts:\n  hpc:\n    ? {big}\n    : 1\n",
        f"hosts: {{hpc: {{scheduler: {big}}}}}\n",
        f"hosts: {{hpc: {{port: {big}}}}}\n",
        f"hosts:\n  hpc:\n    paths:\n      ? {big}\n      : [1]\n",
        f"hosts: {{hpc: {{resources: {{walltime: {big}}}}}}}\n",
        f"? {big}\n: 1\n",
        f"? [{big}, {big}]\n: 1\n",
        f"[{', '.join([big[:1000]] * 500)}]\n",
    ]
    for text in cases:
        message = str(parse_error(text))
        assert len(message) < 600, (text[:60], len(message))
        assert "\n" not in message


def test_a_hosts_file_larger_than_a_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path / "huge.yaml", "hosts: {}\n" + "#" * (2 << 20))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "larger than 1024 KiB" in str(info.value)


def test_a_pipe_or_device_as_hosts_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "hosts.fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        started = time.monotonic()
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "not a regular file" in str(info.value)
        assert time.monotonic() - started < 1


def test_the_hosts_file_is_parsed_again_only_when_its_text_changes(tmp_path: Path) -> None:
    """Asked for several times per cell, the file is read each time but parsed only when
    what it says changed: an edit is seen at once, even one of the same size within the
    file system's timestamp granularity."""
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  hpc:\n    address: a.example.org\n")
    first = load_config(path)
    assert load_config(path) is first  # same text: the same checked object
    path.write_text("hosts:\n  hpc:\n    address: b.example.org\n")  # same size, at once
    second = load_config(path)
    assert second is not first and second.hosts["hpc"].address == "b.example.org"
    path.write_text("hosts:\n  hpc:\n    adress: b.example.org\n")
    with pytest.raises(ConfigError, match="did you mean 'address'"):
        load_config(path)  # a mistake is still reported every time, never a stale config
    with pytest.raises(ConfigError, match="did you mean 'address'"):
        load_config(path)


@pytest.mark.parametrize("written, seconds", [("30", 30.0), ("'30s'", 30.0), ("2m", 120.0),
                                              ("1.5 min", 90.0), ("1h", 3600.0)])
def test_scheduler_poll_takes_seconds_or_a_time(written: str, seconds: float) -> None:
    assert parse(f"hosts:\n  hpc:\n    scheduler_poll: {written}\n").hosts[
        "hpc"].scheduler_poll == seconds
