"""Checking that bad settings are refused with the message a user should see."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.config import ConfigError, load_config

#: Flags that skip the TLS files, for tests of other settings.
INSECURE = {"insecure": "true"}


def assert_refused(
    tmp_path: Path,
    message: str,
    *,
    flags: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    file_text: str | None = None,
) -> None:
    """``load_config`` with these flags (plus INSECURE), environment and YAML file raises a
    ConfigError whose text contains ``message`` (its parentheses taken literally)."""
    cfg = None
    if file_text is not None:
        cfg = tmp_path / "node.yaml"
        cfg.write_text(file_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config({**INSECURE, **(flags or {})}, env=env or {}, config_file=cfg)
