"""Following the live channels: ``listen`` and ``tail --live``, with plain and
sharded pub/sub, on one real Redis (the cluster case is in test_cluster.py)."""

from __future__ import annotations

import io
import threading
import time

import pytest

from redis_logstream import log_context
from redis_logstream.cli import main as cli_main
from redis_logstream.cli.tail import TailRequest, tail
from redis_logstream.naming import Names
from redis_logstream.reading.live import listen
from redis_logstream.reading.reader import StreamReader
from support.helpers import fresh_logger, wait_for


class Listener(threading.Thread):
    def __init__(self, target) -> None:
        super().__init__(daemon=True)
        self.heard: list[str] = []
        self.stop = threading.Event()
        self._target = target

    def run(self) -> None:
        for entry in self._target(self.stop):
            self.heard.append(entry.message)

    def __enter__(self) -> Listener:
        self.start()
        time.sleep(0.3)  # subscribed: pub/sub keeps nothing for late listeners
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(5)


@pytest.mark.parametrize("sharded", [False, True])
def test_listen_hears_what_the_handler_publishes(handlers, redis_url, redis_client, sharded):
    handler = handlers(url=redis_url, sharded_pubsub=sharded)
    logger = fresh_logger(handler)
    with Listener(
        lambda stop: listen(redis_client, Names(), "User.alice", sharded=sharded, stop=stop)
    ) as listener:
        for i in range(3):
            with log_context("User.alice"):
                logger.info("live %d", i)
        logger.info("global only")
        assert handler.flush(5)
        wait_for(lambda: len(listener.heard) >= 3, timeout=5)
    assert listener.heard == ["live 0", "live 1", "live 2"]


def test_a_plain_subscriber_hears_nothing_of_sharded_channels(handlers, redis_url, redis_client):
    handler = handlers(url=redis_url, sharded_pubsub=True)
    logger = fresh_logger(handler)
    with Listener(lambda stop: listen(redis_client, Names(), None, stop=stop)) as listener:
        logger.info("sharded")
        assert handler.flush(5)
        time.sleep(0.3)
    assert listener.heard == []


def test_tail_live_prints_published_records_with_filters(handlers, redis_url, redis_client):
    handler = handlers(url=redis_url)
    logger = fresh_logger(handler)
    logger.warning("before the listener: not shown")
    assert handler.flush(5)
    out = io.StringIO()
    request = TailRequest.from_options({"global_stream": True, "live": True, "level": "WARNING"})
    reader = StreamReader(redis_client)

    def run(stop):
        tail(reader, request, out, io.StringIO(), stop=stop)
        return iter(())

    with Listener(run):
        logger.info("too low")
        logger.error("shown")
        assert handler.flush(5)
        wait_for(lambda: "shown" in out.getvalue(), timeout=5)
    assert [line.rsplit(": ", 1)[1] for line in out.getvalue().splitlines()] == ["shown"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--global", "--live", "--since", "10m"], "--since reads history; --live has none"),
        (["--global", "--sharded"], "--sharded goes with --live"),
    ],
)
def test_live_arguments_that_do_not_go_together_are_usage_errors(redis_url, capsys, args, message):
    assert cli_main(["tail", "--url", redis_url, *args]) == 2
    assert message in capsys.readouterr().err
