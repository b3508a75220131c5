"""`tiergate serve`'s start-up banner: the simulator hint names what to do only on the embedded
defaults; with --config it names the config's simulated models instead."""

from __future__ import annotations

import argparse

from tiergate.cli import _startup_banner
from tiergate.config import load_config, parse_config

ARGS = argparse.Namespace(host="127.0.0.1", port=4000)


def test_embedded_defaults_without_a_key_suggest_a_real_setup(capsys) -> None:
    _startup_banner(load_config(None, env={}), ARGS)
    err = capsys.readouterr().err
    assert "config <embedded defaults>" in err
    assert "SIMULATOR" in err and "set OPENAI_API_KEY or use --config to serve real models" in err


def test_a_config_file_is_not_told_to_use_config(tmp_path, capsys) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("models:\n  - name: gpt-4o-mini\n    deployments: [{provider: sim}]\n"
                    "  - name: gpt-4o\n    deployments: [{provider: openai, api_key: env:K}]\n")
    _startup_banner(load_config(path, env={"K": "sk-x"}), ARGS)
    err = capsys.readouterr().err
    assert f"config {path}" in err and "SIMULATOR" in err
    assert "--config" not in err and "OPENAI_API_KEY" not in err
    assert "models served by it: gpt-4o-mini)" in err


def test_no_simulator_no_simulator_line(capsys) -> None:
    cfg = parse_config({"models": [{"name": "gpt-4o", "deployments": [{"provider": "openai", "api_key": "env:K"}]}]},
                       source="x.yaml", env={"K": "sk-x"})
    _startup_banner(cfg, ARGS)
    assert "SIMULATOR" not in capsys.readouterr().err
