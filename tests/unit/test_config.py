"""The system config: one surface (file, init's dict, P2P_* variables) reaching every core's config,
validated with errors that name the key and where it came from."""

from __future__ import annotations

import json

import pytest

from p2pcompute import config
from p2pcompute.errors import InvalidArgumentError


def test_defaults_are_the_cores_own():
    c = config.system_config({})
    assert c.membership.probe_interval_ms == 500 and c.raft.target_replicas == 5
    assert c.lease.choices == 2 and c.submitter.request_timeout_ms == 30_000
    assert c.table_client.give_up_after_ms == 30_000 and c.transport.unreachable_after_ms == 10_000


def test_file_then_init_dict_then_variables_each_override_the_last(tmp_path):
    path = tmp_path / "p2p.json"
    path.write_text(json.dumps({"membership": {"probe_interval_ms": 800, "suspicion_mult": 6},
                                "lease": {"choices": 3}}))
    env = {config.FILE_ENV: str(path),
           config.JSON_ENV: json.dumps({"membership.probe_interval_ms": 700, "raft": {"heartbeat_interval_ms": 50}}),
           "P2P_MEMBERSHIP_PROBE_INTERVAL_MS": "600", "P2P_TABLE_CLIENT_GIVE_UP_AFTER_MS": "null",
           "P2P_SUBMITTER_PIPELINE_TARGET_MS": "3", "P2P_TOKEN": "not a config key", "P2P_HOME": "/tmp/x"}
    c = config.system_config(env)
    assert c.membership.probe_interval_ms == 600 and c.membership.suspicion_mult == 6
    assert c.lease.choices == 3 and c.raft.heartbeat_interval_ms == 50
    assert c.table_client.give_up_after_ms is None
    assert c.submitter.pipeline_target_ms == 3.0 and isinstance(c.submitter.pipeline_target_ms, float)


def test_yaml_files_are_read_too(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "p2p.yaml"
    path.write_text("transport:\n  unreachable_after_ms: 2500\n")
    assert config.system_config({config.FILE_ENV: str(path)}).transport.unreachable_after_ms == 2500


@pytest.mark.parametrize("env, message", [
    ({"P2P_MEMBERSHIP_PROBE_INTERVAL": "1"}, r"unknown config key membership\.probe_interval \(from "
                                             r"P2P_MEMBERSHIP_PROBE_INTERVAL\); membership has: .*probe_interval_ms"),
    ({config.JSON_ENV: '{"gossip": {"x": 1}}'}, r"unknown config section 'gossip' .*known sections: lease, "),
    ({"P2P_LEASE_CHOICES": "two"}, r"lease\.choices \(from P2P_LEASE_CHOICES\) must be an integer, not 'two'"),
    ({"P2P_RAFT_TARGET_REPLICAS": "true"}, r"raft\.target_replicas .* must be an integer, not True"),
    ({"P2P_MEMBERSHIP_PROBE_TIMEOUT_MS": "900"}, r"config section membership: .*probe_timeout_ms \(900\) must be "
                                                 r"shorter than probe_interval_ms"),
    ({config.JSON_ENV: "{not json"}, r"P2P_SYSTEM_CONFIG is not valid JSON"),
    ({config.FILE_ENV: "/nonexistent/p2p.json"}, r"cannot read the config file /nonexistent/p2p\.json"),
])
def test_bad_settings_say_which_key_where_from_and_what_is_accepted(env, message):
    with pytest.raises(InvalidArgumentError, match=message):
        config.system_config(env)


def test_init_dict_is_validated_at_once_and_undone_by_the_next_init(monkeypatch):
    monkeypatch.delenv(config.JSON_ENV, raising=False)
    with pytest.raises(InvalidArgumentError, match="unknown config key transport.window"):
        config.set_process_config({"transport": {"window": 1}})
    assert config.JSON_ENV not in __import__("os").environ
    config.set_process_config({"transport": {"unreachable_after_ms": 1000}})
    assert config.system_config().transport.unreachable_after_ms == 1000
    config.set_process_config(None)
    assert config.system_config().transport.unreachable_after_ms == 10_000


def test_p2p_start_refuses_a_bad_config_file_before_starting_anything(tmp_path):
    from p2pcompute import cli
    bad = tmp_path / "bad.json"
    bad.write_text('{"lease": {"choices": 0.5}}')
    code = cli.main(["start", "--home", str(tmp_path / "home"), "--config", str(bad), "--port", "0",
                     "--host", "127.0.0.1"])
    assert code == 1
