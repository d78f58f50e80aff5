"""The default checkpoint root is private to the user (issue 13 item 5).

The old default, ``<tmp>/scalekit-checkpoints``, was shared: created by whoever came
first and left world-readable, so another local user could replace a run's checkpoints.
"""

from __future__ import annotations

import os
import stat

import pytest

from scalekit.config import CheckpointConfig
from scalekit.errors import ConfigError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh $XDG_CACHE_HOME."""
    home = tmp_path / "cache"
    home.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_default_root_is_a_private_folder_in_the_users_cache(cache):
    url = CheckpointConfig().default_url("run1")
    root = cache / "scalekit" / "checkpoints"
    assert url == f"{root}/run1"
    assert root.is_dir() and mode(root) == 0o700
    assert os.stat(root).st_uid == os.getuid()


def test_without_xdg_cache_home_it_is_under_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert CheckpointConfig().default_url("r") == f"{tmp_path}/.cache/scalekit/checkpoints/r"
    assert mode(tmp_path / ".cache" / "scalekit" / "checkpoints") == 0o700


def test_a_readable_root_of_ones_own_is_made_private(cache):
    root = cache / "scalekit" / "checkpoints"
    root.mkdir(parents=True)
    root.chmod(0o755)
    CheckpointConfig().default_url("r")
    assert mode(root) == 0o700


@pytest.mark.parametrize("bits", [0o770, 0o777, 0o1777], ids=["group", "world", "like-tmp"])
def test_a_root_others_may_write_to_is_refused(cache, bits):
    root = cache / "scalekit" / "checkpoints"
    root.mkdir(parents=True)
    root.chmod(bits)
    with pytest.raises(ConfigError, match="scalekit.checkpoint.root.*only its owner") as info:
        CheckpointConfig().default_url("r")
    assert f"chmod 700 {root}" in str(info.value)
    assert mode(root) == bits  # refused, not silently changed


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                    reason="giving a folder to another user needs root")
def test_a_root_owned_by_someone_else_is_refused(cache):
    root = cache / "scalekit" / "checkpoints"
    root.mkdir(parents=True, mode=0o700)
    os.chown(root, 4242, 4242)
    with pytest.raises(ConfigError, match="owned by this user") as info:
        CheckpointConfig().default_url("r")
    assert "belongs to uid 4242" in str(info.value)


def test_a_configured_root_is_used_as_given(tmp_path, cache):
    config = CheckpointConfig(root=str(tmp_path / "team"))
    assert config.default_url("r") == f"{tmp_path}/team/r"
    assert not (cache / "scalekit").exists()  # the private default is not even created
