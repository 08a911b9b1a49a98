"""Client channels with the project's limits: one place for the message size bound and the
options every client of the services sets."""

from __future__ import annotations

import grpc

__all__ = ["MAX_MESSAGE_BYTES", "channel_options", "open_channel"]

MAX_MESSAGE_BYTES = 64 << 20  # a 4K frame's layers fit many times over


def channel_options(server_name: str = "", keepalive: bool = False) -> list[tuple[str, object]]:
    """Message size limits; ``server_name`` overrides the TLS name to expect; ``keepalive``
    pings an idle long-lived stream (the edge's) so dead connections are noticed."""
    opts: list[tuple[str, object]] = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if keepalive:
        opts += [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
                 ("grpc.keepalive_permit_without_calls", 1),
                 ("grpc.http2.max_pings_without_data", 0)]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


def open_channel(target: str, credentials: grpc.ChannelCredentials | None = None,
                 server_name: str = "", keepalive: bool = False) -> grpc.Channel:
    """A secure channel when ``credentials`` are given, else a plaintext one."""
    opts = channel_options(server_name, keepalive)
    if credentials is not None:
        return grpc.secure_channel(target, credentials, opts)
    return grpc.insecure_channel(target, opts)
