"""The log-store contract (support.log_contract) run against the file-backed Log."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.log import Log, LogConfig, SyncPolicy
from support.log_contract import LogStoreContract, StoreFactory


def _open(directory: Path, config: LogConfig) -> Log:
    return Log.open(directory, config)


class TestFileLog(LogStoreContract):
    @pytest.fixture
    def open_store(self) -> StoreFactory:
        return _open


class TestFileLogOneBigSegment(LogStoreContract):
    """Same promises when everything fits one segment and nothing is fsynced."""

    @pytest.fixture
    def open_store(self) -> StoreFactory:
        return _open

    @pytest.fixture
    def config(self) -> LogConfig:
        return LogConfig(sync=SyncPolicy.NEVER)
