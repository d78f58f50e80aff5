"""Config objects: defaults from the YAML, overrides from dask.config / env / keywords,
and errors that name the field, the bad value and what would have been accepted."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.config
import pytest

from scalekit.config import (
    _DEFAULTS,
    AdaptConfig,
    ClusterConfig,
    KubernetesConfig,
    PanelConfig,
    TrainConfig,
    _Section,
    as_dict,
)
from scalekit.errors import ConfigError, ScalekitError

pytestmark = pytest.mark.usefixtures("clean_dask_config")


# -- defaults ---------------------------------------------------------------------------


def test_defaults_come_from_the_yaml_file():
    assert ClusterConfig.from_config() == ClusterConfig()
    assert AdaptConfig.from_config() == AdaptConfig()
    assert PanelConfig.from_config() == PanelConfig()
    assert dask.config.get("scalekit.cluster.max-workers") == 16
    # durations in the YAML are strings; the config objects hold seconds
    assert dask.config.get("scalekit.cluster.start-timeout") == "60s"
    assert ClusterConfig.from_config().start_timeout == 60.0


def test_config_objects_are_frozen_and_json_safe():
    config = ClusterConfig.from_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 5  # type: ignore[misc]
    for obj in (config, AdaptConfig(), PanelConfig()):
        json.dumps(as_dict(obj))


# -- valid values -------------------------------------------------------------------------

VALID = [
    # (class, keyword arguments, attribute, value after validation)
    (ClusterConfig, {"workers": 1}, "workers", 1),
    (ClusterConfig, {"workers": 16}, "workers", 16),
    (ClusterConfig, {"workers": "3"}, "workers", 3),
    (ClusterConfig, {"workers": 20, "max_workers": 32}, "workers", 20),
    (ClusterConfig, {"threads_per_worker": 4}, "threads_per_worker", 4),
    (ClusterConfig, {"backend": "kubernetes"}, "backend", "kubernetes"),
    (ClusterConfig, {"memory_limit": "auto"}, "memory_limit", "auto"),
    (ClusterConfig, {"memory_limit": "2GiB"}, "memory_limit", 2 * 2**30),
    (ClusterConfig, {"memory_limit": 1_000_000}, "memory_limit", 1_000_000),
    (ClusterConfig, {"memory_limit": None}, "memory_limit", None),
    (ClusterConfig, {"memory_limit": "null"}, "memory_limit", None),
    (ClusterConfig, {"processes": False}, "processes", False),
    (ClusterConfig, {"processes": "yes"}, "processes", True),
    (ClusterConfig, {"dashboard": "false"}, "dashboard", False),
    (ClusterConfig, {"start_timeout": "2s"}, "start_timeout", 2.0),
    (ClusterConfig, {"start_timeout": "1500ms"}, "start_timeout", 1.5),
    (ClusterConfig, {"start_timeout": 10}, "start_timeout", 10.0),
    (AdaptConfig, {"minimum": 0, "maximum": 1}, "minimum", 0),
    (AdaptConfig, {"minimum": 4, "maximum": 4}, "maximum", 4),
    (AdaptConfig, {"interval": "250ms"}, "interval", 0.25),
    (PanelConfig, {"refresh": "1s"}, "refresh", 1.0),
    (PanelConfig, {"refresh": 0.5}, "refresh", 0.5),
    (PanelConfig, {"history": 2}, "history", 2),
]


@pytest.mark.parametrize(("cls", "kwargs", "attr", "expected"), VALID)
def test_valid_values(cls, kwargs, attr, expected):
    assert getattr(cls(**kwargs), attr) == expected
    # the same through from_config (keyword overrides on top of dask.config), where a
    # None keyword means "not given" (see test_none_keyword_means_not_given)
    if None not in kwargs.values():
        assert getattr(cls.from_config(**kwargs), attr) == expected


def test_none_keyword_means_not_given():
    # from_config (and so scalekit.cluster) cannot tell memory_limit=None from "unset":
    # "no limit" through it is spelled "null" (or None in dask.config / the YAML).
    assert ClusterConfig.from_config(memory_limit=None).memory_limit == "auto"
    assert ClusterConfig.from_config(memory_limit="null").memory_limit is None


# -- invalid values -------------------------------------------------------------------------

INVALID = [
    # (class, keyword arguments, field named in the error, words of the accepted range)
    (ClusterConfig, {"workers": 0}, "scalekit.cluster.workers", "1..16"),
    (ClusterConfig, {"workers": 17}, "scalekit.cluster.workers", "1..16"),
    (ClusterConfig, {"workers": -1}, "scalekit.cluster.workers", "1..16"),
    (ClusterConfig, {"workers": 2.5}, "scalekit.cluster.workers", "1..16"),
    (ClusterConfig, {"workers": True}, "scalekit.cluster.workers", "1..16"),
    (ClusterConfig, {"workers": "two"}, "scalekit.cluster.workers", "1..16"),
    (ClusterConfig, {"workers": 5, "max_workers": 4}, "scalekit.cluster.workers", "1..4"),
    (ClusterConfig, {"max_workers": 0}, "scalekit.cluster.max-workers", "1..4096"),
    (ClusterConfig, {"threads_per_worker": 0}, "scalekit.cluster.threads-per-worker", "1..1024"),
    (ClusterConfig, {"backend": "slurm"}, "scalekit.cluster.backend", "local, kubernetes"),
    (ClusterConfig, {"memory_limit": "0"}, "scalekit.cluster.memory-limit", "'auto'"),
    (ClusterConfig, {"memory_limit": -5}, "scalekit.cluster.memory-limit", "positive size"),
    (ClusterConfig, {"memory_limit": "lots"}, "scalekit.cluster.memory-limit", "'2GiB'"),
    (ClusterConfig, {"memory_limit": True}, "scalekit.cluster.memory-limit", "'auto'"),
    (ClusterConfig, {"processes": "maybe"}, "scalekit.cluster.processes", "true or false"),
    (ClusterConfig, {"dashboard": 1}, "scalekit.cluster.dashboard", "true or false"),
    (ClusterConfig, {"start_timeout": "soon"}, "scalekit.cluster.start-timeout", ">= 1s"),
    (ClusterConfig, {"start_timeout": 0.5}, "scalekit.cluster.start-timeout", ">= 1s"),
    (AdaptConfig, {"minimum": 3, "maximum": 1}, "scalekit.adapt.minimum", "at most maximum (1)"),
    (AdaptConfig, {"minimum": -1}, "scalekit.adapt.minimum", ">= 0"),
    (AdaptConfig, {"maximum": 0}, "scalekit.adapt.maximum", ">= 1"),
    (AdaptConfig, {"interval": "10ms"}, "scalekit.adapt.interval", ">= 0.1s"),
    (AdaptConfig, {"wait_count": 0}, "scalekit.adapt.wait-count", "1..1000"),
    (PanelConfig, {"refresh": 0.1}, "scalekit.panel.refresh", ">= 0.5s"),
    (PanelConfig, {"refresh": "100ms"}, "scalekit.panel.refresh", ">= 0.5s"),
    (PanelConfig, {"history": 1}, "scalekit.panel.history", "2..100000"),
    (TrainConfig, {"host_reduce": "often"}, "scalekit.training.host-reduce", "true or false"),
]


@pytest.mark.parametrize(("cls", "kwargs", "field", "accepted"), INVALID)
def test_invalid_values_name_field_value_and_range(cls, kwargs, field, accepted):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    error = info.value
    message = str(error)
    assert error.field == field
    assert message.startswith(f"{field}: ")
    bad = kwargs[field.rsplit(".", 1)[-1].replace("-", "_")]
    assert error.value == bad
    assert repr(bad) in message
    assert accepted in message
    # one error family, and the builtin a caller would catch
    assert isinstance(error, ScalekitError)
    assert isinstance(error, ValueError)


def test_too_many_workers_hints_at_max_workers():
    with pytest.raises(ConfigError, match=r"Raise max_workers \(now 16\)"):
        ClusterConfig(workers=17)


def test_unknown_keyword_is_named():
    with pytest.raises(ConfigError, match="'wrokers'") as info:
        ClusterConfig.from_config(wrokers=3)
    assert "workers" in info.value.expected


def test_adapt_maximum_must_fit_max_workers():
    with pytest.raises(ConfigError, match=r"scalekit.adapt.maximum: got 40.*max-workers \(16\)"):
        AdaptConfig(minimum=1, maximum=40).within(16)
    assert AdaptConfig(minimum=1, maximum=16).within(16).maximum == 16


@pytest.mark.parametrize(
    ("n", "ok"), [(1, True), (16, True), ("3", True), (0, False), (17, False), (True, False),
                  (2.5, False), (None, False)],
)
def test_check_workers(n, ok):
    config = ClusterConfig()
    if ok:
        assert config.check_workers(n) == int(n)
    else:
        with pytest.raises(ConfigError, match=r"expected an integer in 1\.\.16") as info:
            config.check_workers(n)
        assert info.value.value == n


def test_replace_validates_again():
    config = ClusterConfig()
    assert config.replace(workers=4).workers == 4
    with pytest.raises(ConfigError, match="scalekit.cluster.workers"):
        config.replace(workers=0)


# -- dask.config and environment variables ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "attr", "expected"),
    [
        ("scalekit.cluster.workers", 4, "workers", 4),
        ("scalekit.cluster.threads-per-worker", 2, "threads_per_worker", 2),
        ("scalekit.cluster.memory-limit", "1GiB", "memory_limit", 2**30),
        ("scalekit.cluster.memory-limit", None, "memory_limit", None),
        ("scalekit.cluster.start-timeout", "5s", "start_timeout", 5.0),
        ("scalekit.cluster.dashboard", False, "dashboard", False),
    ],
)
def test_dask_config_set_is_read(key, value, attr, expected):
    with dask.config.set({key: value}):
        assert getattr(ClusterConfig.from_config(), attr) == expected


def test_keywords_win_over_dask_config():
    with dask.config.set({"scalekit.cluster.workers": 4}):
        assert ClusterConfig.from_config(workers=3).workers == 3
        assert ClusterConfig.from_config(workers=None).workers == 4  # None = not given


def test_bad_dask_config_value_is_reported_with_its_key():
    with dask.config.set({"scalekit.cluster.workers": 99}):
        with pytest.raises(ConfigError, match=r"scalekit.cluster.workers: got 99"):
            ClusterConfig.from_config()


# -- environment variables, as a fresh interpreter reads them ----------------------------------
#
# Dask reads DASK_* variables once, when ``dask.config`` is first imported: before
# scalekit's YAML defaults exist. A multi-word variable is then stored with underscores
# (``max_workers``) and the defaults merge into that spelling. ``dask.config.refresh()``
# in this process would load the defaults first and hide exactly that, so every case
# here runs in a new interpreter with the variables set before it imports scalekit.

_FRESH = textwrap.dedent("""
    import dataclasses, json, sys

    import scalekit  # the package first, as a notebook does; dask.config comes with config
    from scalekit import config
    from scalekit.errors import ConfigError

    request = json.loads(sys.argv[1])
    sections = config._Section.__subclasses__()
    if request["unvalidated"]:  # what from_config read, before any validation
        for cls in sections:
            cls.__post_init__ = lambda self: None
    out = {}
    for cls in sections:
        try:
            obj = cls.from_config(**request["overrides"].get(cls.section, {}))
        except ConfigError as exc:
            out[cls.section] = {"error": {"field": exc.field, "value": exc.value,
                                          "message": str(exc)}}
        else:
            out[cls.section] = {"config": dataclasses.asdict(obj)}
    print(json.dumps(out, default=repr))
""")


def fresh_configs(tmp_path: Path, env: dict[str, str], *, unvalidated: bool = False,
                  overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every section's ``from_config()`` in a new interpreter started with ``env``.

    Returns ``{section: {"config": fields} | {"error": {"field", "value", "message"}}}``.
    The user's Dask config files and ``DASK_SCALEKIT__*`` variables are hidden (``HOME``
    and ``DASK_CONFIG`` point at an empty folder), as on a fresh machine.
    """
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items()
            if not k.upper().startswith(("DASK_SCALEKIT__", "DASK_CONFIG"))}
    request = json.dumps({"unvalidated": unvalidated, "overrides": overrides or {}})
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, request], capture_output=True, text=True, timeout=120,
        env={**base, "HOME": str(home), "DASK_CONFIG": str(home), **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _env_name(section: str, field: str) -> str:
    return f"DASK_SCALEKIT__{section.upper()}__{field.upper()}"


def test_every_field_of_every_section_is_read_from_its_environment_variable(tmp_path):
    # one probe value per field, validation switched off: what from_config *reads*
    env: dict[str, str] = {}
    expected: dict[str, dict[str, Any]] = {}
    for cls in _Section.__subclasses__():
        defaults = _DEFAULTS["scalekit"].get(cls.section) or {}
        for field in dataclasses.fields(cls):
            probe = f"probe-{cls.section}-{field.name}"
            if isinstance(defaults.get(field.name.replace("_", "-")), Mapping):
                # a mapping in the YAML: Dask merges a nested variable into it
                env[_env_name(cls.section, field.name) + "__PROBE"] = probe
            else:
                env[_env_name(cls.section, field.name)] = probe
            expected.setdefault(cls.section, {})[field.name] = probe
    assert {"cluster", "adapt", "panel", "training", "checkpoint", "kubernetes"} <= set(expected)
    assert "DASK_SCALEKIT__TRAINING__COLLECTIVE_TIMEOUT" in env  # multi-word names too

    found = fresh_configs(tmp_path, env, unvalidated=True)
    dropped = []
    for section, fields in expected.items():
        got = found[section]["config"]
        for name, probe in fields.items():
            value = got[name]
            if not (value == probe or (isinstance(value, dict) and value.get("probe") == probe)):
                dropped.append(f"{_env_name(section, name)} -> {name}={value!r}")
    assert not dropped, "environment variables ignored:\n" + "\n".join(dropped)


def test_multi_word_settings_from_the_environment_are_validated_and_used(tmp_path):
    env = {
        "DASK_SCALEKIT__CLUSTER__MAX_WORKERS": "32",
        "DASK_SCALEKIT__CLUSTER__THREADS_PER_WORKER": "2",
        "DASK_SCALEKIT__CLUSTER__START_TIMEOUT": "90s",
        "DASK_SCALEKIT__ADAPT__WAIT_COUNT": "5",
        "DASK_SCALEKIT__PANEL__HISTORY": "300",
        "DASK_SCALEKIT__TRAINING__HOST_REDUCE": "False",
        "DASK_SCALEKIT__TRAINING__COLLECTIVE_TIMEOUT": "5s",
        "DASK_SCALEKIT__TRAINING__DATA_ON_DEVICE": "False",
        "DASK_SCALEKIT__TRAINING__MAX_FAILURES": "7",
        "DASK_SCALEKIT__CHECKPOINT__EVERY_SECONDS": "30",
        "DASK_SCALEKIT__CHECKPOINT__EVERY_EPOCHS": "2",
        "DASK_SCALEKIT__KUBERNETES__KEEP_ON_SHUTDOWN": "True",
        "DASK_SCALEKIT__KUBERNETES__IMAGE_PULL_POLICY": "Always",
        "DASK_SCALEKIT__KUBERNETES__SCHEDULER_RESOURCES__LIMITS__CPU": "2",
        "DASK_SCALEKIT__KUBERNETES__NODE_SELECTOR__POOL": "training",
    }
    found = fresh_configs(tmp_path, env)
    got = {section: value["config"] for section, value in found.items()}
    assert got["cluster"]["max_workers"] == 32
    assert got["cluster"]["threads_per_worker"] == 2
    assert got["cluster"]["start_timeout"] == 90.0
    assert got["adapt"]["wait_count"] == 5
    assert got["panel"]["history"] == 300
    assert got["training"]["host_reduce"] is False
    assert got["training"]["collective_timeout"] == 5.0
    assert got["training"]["data_on_device"] is False
    assert got["training"]["max_failures"] == 7
    assert got["checkpoint"]["every_seconds"] == 30.0
    assert got["checkpoint"]["every_epochs"] == 2
    assert got["kubernetes"]["keep_on_shutdown"] is True
    assert got["kubernetes"]["image_pull_policy"] == "Always"
    assert got["kubernetes"]["scheduler_resources"] == {"limits": {"cpu": "2"}}
    assert got["kubernetes"]["node_selector"] == {"pool": "training"}
    # everything not set still comes from the YAML
    assert got["cluster"]["workers"] == ClusterConfig().workers
    assert got["training"]["hang_timeout"] == TrainConfig().hang_timeout


ENV_VALID = [
    ("DASK_SCALEKIT__CLUSTER__WORKERS", "4", ClusterConfig, "workers", 4),
    ("DASK_SCALEKIT__CLUSTER__MAX_WORKERS", "32", ClusterConfig, "max_workers", 32),
    ("DASK_SCALEKIT__CLUSTER__THREADS_PER_WORKER", "2", ClusterConfig, "threads_per_worker", 2),
    ("DASK_SCALEKIT__CLUSTER__MEMORY_LIMIT", "512MiB", ClusterConfig, "memory_limit", 512 * 2**20),
    ("DASK_SCALEKIT__CLUSTER__MEMORY_LIMIT", "None", ClusterConfig, "memory_limit", None),
    ("DASK_SCALEKIT__CLUSTER__PROCESSES", "False", ClusterConfig, "processes", False),
    ("DASK_SCALEKIT__CLUSTER__START_TIMEOUT", "90s", ClusterConfig, "start_timeout", 90.0),
    ("DASK_SCALEKIT__ADAPT__MAXIMUM", "8", AdaptConfig, "maximum", 8),
    ("DASK_SCALEKIT__PANEL__REFRESH", "2s", PanelConfig, "refresh", 2.0),
    ("DASK_SCALEKIT__TRAINING__HOST_REDUCE", "False", TrainConfig, "host_reduce", False),
    ("DASK_SCALEKIT__KUBERNETES__KEEP_ON_SHUTDOWN", "true", KubernetesConfig,
     "keep_on_shutdown", True),
]


@pytest.mark.parametrize(("var", "raw", "cls", "attr", "expected"), ENV_VALID)
def test_environment_variables(tmp_path, var, raw, cls, attr, expected):
    found = fresh_configs(tmp_path, {var: raw})[cls.section]["config"]
    assert found[attr] == expected
    # the other defaults from the YAML are still there
    default = as_dict(cls.from_config())
    assert {k: v for k, v in found.items() if k != attr} == {
        k: json.loads(json.dumps(v)) for k, v in default.items() if k != attr}


ENV_INVALID = [
    ("DASK_SCALEKIT__CLUSTER__WORKERS", "0", "scalekit.cluster.workers", "1..16"),
    ("DASK_SCALEKIT__CLUSTER__WORKERS", "100", "scalekit.cluster.workers", "1..16"),
    ("DASK_SCALEKIT__CLUSTER__WORKERS", "many", "scalekit.cluster.workers", "1..16"),
    ("DASK_SCALEKIT__CLUSTER__BACKEND", "yarn", "scalekit.cluster.backend", "local, kubernetes"),
    ("DASK_SCALEKIT__CLUSTER__MAX_WORKERS", "0", "scalekit.cluster.max-workers", "1..4096"),
    ("DASK_SCALEKIT__PANEL__REFRESH", "0.1", "scalekit.panel.refresh", ">= 0.5s"),
    ("DASK_SCALEKIT__TRAINING__HOST_REDUCE", "often", "scalekit.training.host-reduce",
     "true or false"),
    ("DASK_SCALEKIT__TRAINING__COLLECTIVE_TIMEOUT", "0.5", "scalekit.training.collective-timeout",
     ">= 1s"),
]


@pytest.mark.parametrize(("var", "raw", "field", "accepted"), ENV_INVALID)
def test_bad_environment_variables(tmp_path, var, raw, field, accepted):
    section = field.split(".")[1]
    error = fresh_configs(tmp_path, {var: raw})[section]["error"]
    assert error["field"] == field
    assert raw in error["message"]
    assert accepted in error["message"]


def test_environment_variable_is_beaten_by_a_keyword(tmp_path):
    env = {"DASK_SCALEKIT__CLUSTER__WORKERS": "4", "DASK_SCALEKIT__CLUSTER__MAX_WORKERS": "32"}
    found = fresh_configs(tmp_path, env, overrides={"cluster": {"workers": 2}})
    assert found["cluster"]["config"]["workers"] == 2
    assert found["cluster"]["config"]["max_workers"] == 32
    found = fresh_configs(tmp_path, env, overrides={"cluster": {"max_workers": 8, "workers": 3}})
    assert found["cluster"]["config"]["max_workers"] == 8
