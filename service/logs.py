"""Structured logs (structlog): JSON lines by default, console rendering with UNISR_LOG_JSON=false."""
from __future__ import annotations

import logging

import structlog


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    logging.basicConfig(level=level, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
    )
