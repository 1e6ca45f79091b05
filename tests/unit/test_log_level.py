"""OPENMODEL_LOG_LEVEL (openmodel/__main__.py): a wrong value stops the operator naming
the three that work; a right one sets the root logger's level through kopf."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from openmodel.__main__ import configure_logging


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


def test_a_wrong_level_stops_with_the_three_that_work(root_logger: logging.Logger) -> None:
    with pytest.raises(SystemExit) as stop:
        configure_logging("verbose")
    assert str(stop.value) == "OPENMODEL_LOG_LEVEL='verbose': expected one of debug, info, warning"


@pytest.mark.parametrize(
    ("level", "expected"),
    [("debug", logging.DEBUG), ("info", logging.INFO), ("warning", logging.WARNING)],
)
def test_each_level_reaches_the_root_logger(
    root_logger: logging.Logger, level: str, expected: int
) -> None:
    configure_logging(level)
    assert root_logger.level == expected


def test_unset_leaves_logging_alone(root_logger: logging.Logger) -> None:
    before = (root_logger.level, list(root_logger.handlers))
    configure_logging("")
    assert (root_logger.level, list(root_logger.handlers)) == before
