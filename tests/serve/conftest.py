"""Serving tests share one way to run an app over real HTTP: uvicorn in a thread on a free loopback port."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def http_server():
    """``start(app)`` → a running ``lorakit.serve.server.Served`` on 127.0.0.1, stopped after the module."""
    from lorakit.serve.server import Served
    started = []

    def start(app):
        started.append(Served(app))
        return started[-1]

    yield start
    for s in started:
        s.stop()
