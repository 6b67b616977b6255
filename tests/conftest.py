"""Session-wide real services: a redis-server, a Celery worker, the server."""

import uuid

import pytest
from celery import Celery

from notify_server.dev.embedded_redis import EmbeddedRedis
from tests.support.processes import start_server, start_worker, stop_all_started


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session():
    yield
    stop_all_started()


@pytest.fixture(scope="session")
def redis_server():
    server = EmbeddedRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_redis():
    """Start private redis-servers for one test; all are stopped after it."""
    started = []

    def make(**options) -> EmbeddedRedis:
        server = EmbeddedRedis(**options)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def worker(redis_server):
    child = start_worker(redis_server.url, f"test-{uuid.uuid4().hex[:6]}@localhost",
                         concurrency=3)
    yield child
    child.stop()


@pytest.fixture(scope="session")
def server_port(redis_server, worker):
    child, port = start_server(redis_server.url)
    yield port
    child.stop()


@pytest.fixture(scope="session")
def producer(redis_server):
    """A Celery client that submits demo tasks by name, as a web app would."""
    app = Celery("test-producer", broker=redis_server.url, set_as_current=False)
    yield app
    app.close()

