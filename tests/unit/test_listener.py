"""The kept HTTP listener (deployments/listener.py): replicas accept from one socket that outlives them."""

from __future__ import annotations

import socket

import pytest

from deployments.listener import ListenerKeeper, fetch_listener
from tests.integration.utils import free_port


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_connections_wait_while_no_replica_accepts_and_reach_the_next_one():
    port = free_port()
    with ListenerKeeper("127.0.0.1", port):
        early = connect(port)  # no replica yet: queued, not refused
        first = fetch_listener("127.0.0.1", port)
        assert first is not None and first.getsockname() == ("127.0.0.1", port)
        first.settimeout(5)
        conn, _ = first.accept()
        early.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()
        first.close()  # the replica stops (or dies): its copy goes, the port stays open

        between = connect(port)  # while no replica accepts
        between.sendall(b"pong")
        second = fetch_listener("127.0.0.1", port)  # its replacement
        second.settimeout(5)
        conn, _ = second.accept()
        assert conn.recv(4) == b"pong"
        conn.close()
        second.close()
        early.close()
        between.close()
    with pytest.raises(ConnectionRefusedError):  # the keeper closed: nothing listens any more
        connect(port)


def test_without_a_keeper_there_is_nothing_to_fetch():
    assert fetch_listener("127.0.0.1", free_port()) is None


def test_a_second_keeper_for_the_port_is_refused_with_the_reason():
    port = free_port()
    with ListenerKeeper("127.0.0.1", port):
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            ListenerKeeper("127.0.0.1", port)
        assert fetch_listener("127.0.0.1", port) is not None  # the first keeper still hands it out
