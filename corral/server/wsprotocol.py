"""uvicorn's sans-I/O WebSocket protocol, with reads paused only when frames pile up.

uvicorn pauses reading the socket after every received frame and resumes it when the
application takes the frame, two `epoll_ctl` calls per frame. An agent channel
carries several frames per invocation, so this subclass keeps reading while the
application is keeping up (its queue is empty) and pauses exactly as uvicorn does
once a frame is waiting: memory per connection stays bounded by what one read can
hold, as before.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class AgentWebSocketProtocol(WebSocketsSansIOProtocol):
    """The WebSocket protocol `corral server` runs under uvicorn."""

    def send_receive_event_to_app(self) -> None:
        """Queue a received message; pause reading only if another one is still queued."""
        if self.read_paused or not self.queue.empty():
            super().send_receive_event_to_app()
            return
        # The base class pauses unless reading already is; let it believe so this once.
        self.read_paused = True
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = False
