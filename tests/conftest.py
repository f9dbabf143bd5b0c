"""Shared fixtures (the helpers they use are in tests/helpers.py)."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.helpers import ROOT


@pytest.fixture(scope="session")
def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params_dict(raw_params) -> dict:
    return copy.deepcopy(raw_params)
