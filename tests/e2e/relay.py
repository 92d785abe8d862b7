"""A TCP relay on loopback that a test controls: it counts bytes each way, and can cut a
connection (or hold it still) once that connection has carried so many bytes one way."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

UP, DOWN = "up", "down"  # client -> upstream, upstream -> client


@dataclass
class _Trigger:
    direction: str
    after: int
    hold: bool  # hold the connection still instead of cutting it
    outage: bool = False  # cut every connection and refuse new ones until `restore`


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    counts: dict[str, int] = field(default_factory=lambda: {UP: 0, DOWN: 0})
    released: threading.Event = field(default_factory=threading.Event)
    pumping: int = 2  # directions still being forwarded

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class Relay:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream_port`, one thread per direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cuts = 0
        self.held = threading.Event()
        self._trigger: _Trigger | None = None
        self._held_pair: _Pair | None = None
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        # Port 0: the kernel picks a free one, so no other process can take it first.
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._refusing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """The relay's base URL, to use as the server URL."""
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, direction: str, count: int) -> None:
        """Cut the first connection that carries `count` bytes in `direction` (once)."""
        self._trigger = _Trigger(direction, count, hold=False)

    def outage_after(self, direction: str, count: int) -> None:
        """`outage()` once a connection carried `count` bytes in `direction` (mid-flow)."""
        self._trigger = _Trigger(direction, count, hold=False, outage=True)

    def hold_after(self, direction: str, count: int) -> None:
        """Stop forwarding on the first connection that carries `count` bytes in `direction`."""
        self.held.clear()
        self._trigger = _Trigger(direction, count, hold=True)

    def cut_held(self) -> None:
        """Close the held connection (its client was killed, say)."""
        pair = self._held_pair
        if pair is not None:
            pair.close()
            pair.released.set()

    def cut(self) -> None:
        """Close every connection now (each side sees its peer reset)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self.cuts += 1
            pair.close()
            pair.released.set()

    def refuse(self, refusing: bool = True) -> None:
        """While refusing, a new connection is closed as soon as it is accepted."""
        with self._lock:
            self._refusing = refusing

    def outage(self) -> None:
        """The network is down: cut every connection and refuse new ones (until `restore`)."""
        self.refuse()
        self.cut()

    def restore(self) -> None:
        """The network is back: accept connections again."""
        self.refuse(False)

    def close(self) -> None:
        """Stop accepting and close every connection."""
        with self._lock:
            self._closed = True
            pairs, self._pairs = self._pairs, []
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        with contextlib.suppress(OSError):
            self._listener.close()
        for pair in pairs:
            pair.close()
            pair.released.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:  # the server never sees a connection made during an outage
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                # Decided under the lock, so a connection accepted while `cut`, `outage`
                # or `close` runs is either refused here or closed by them: none escapes.
                admitted = not (self._refusing or self._closed)
                if admitted:
                    self._pairs.append(pair)
            if not admitted:
                pair.close()
                continue
            threading.Thread(target=self._pump, args=(pair, UP), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, DOWN), daemon=True).start()

    def _pump(self, pair: _Pair, direction: str) -> None:
        source, sink = (
            (pair.client, pair.upstream) if direction == UP else (pair.upstream, pair.client)
        )
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                self._finished(pair)
                return
            try:
                sink.sendall(data)
            except OSError:
                self._finished(pair)
                return
            pair.counts[direction] += len(data)
            with self._lock:
                trigger = self._trigger
                fire = (
                    trigger is not None
                    and trigger.direction == direction
                    and pair.counts[direction] >= trigger.after
                )
                if fire:
                    self._trigger = None
            if fire and trigger is not None:
                if trigger.hold:
                    self._held_pair = pair
                    self.held.set()
                    pair.released.wait()
                    return
                if trigger.outage:
                    self.outage()
                    return
                self.cuts += 1
                pair.close()
                return

    def _finished(self, pair: _Pair) -> None:
        """One direction of `pair` is done; once both are, its sockets are closed."""
        with self._lock:
            pair.pumping -= 1
            done = pair.pumping == 0
            if done and pair in self._pairs:
                self._pairs.remove(pair)
        if done:
            pair.close()
