"""The hosts file's JSON Schema: made from the loader's own checks (every key has its part),
published as docs/hosts.schema.json (kept in step), and agreeing with the loader on the
examples: the README's and the tests' full one pass, typical mistakes fail."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml
from helpers import REPO
from test_config import FULL_EXAMPLE

from remote_magic.config.checks import RESOURCE_KEYS
from remote_magic.config.hosts import HOST_KEYS
from remote_magic.config.schema import hosts_schema


def _validator() -> jsonschema.Draft202012Validator:
    schema = hosts_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_key_has_its_part_and_the_published_file_is_current() -> None:
    schema = hosts_schema()
    host = schema["properties"]["hosts"]["additionalProperties"]["properties"]
    assert set(host) == set(HOST_KEYS) and all(p["description"] for p in host.values())
    assert set(host["resources"]["anyOf"][0]["properties"]) == set(RESOURCE_KEYS)
    published = json.loads((REPO / "docs" / "hosts.schema.json").read_text())
    assert published == schema, "run: remote-magic schema > docs/hosts.schema.json"


def test_the_examples_pass() -> None:
    readme = (REPO / "README.md").read_text()
    example = re.search(r"```yaml\n(default: hpc\nhosts:.*?)```", readme, re.S)
    assert example is not None
    for text in (FULL_EXAMPLE, example.group(1)):
        assert list(_validator().iter_errors(yaml.safe_load(text))) == []


@pytest.mark.parametrize("setting", ["port: '22'", "transport: telnet", "adress: me@there",
                                     "scheduler_poll: fast", "warm: maybe",
                                     "resources: {walltime: forever}", "max_running: 0"])
def test_typical_mistakes_fail(setting: str) -> None:
    data = yaml.safe_load(f"hosts:\n  hpc:\n    {setting}\n")
    assert list(_validator().iter_errors(data)), setting
