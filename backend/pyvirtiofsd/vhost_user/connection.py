"""The thin I/O shell around the codec: vhost-user messages over a unix stream socket,
with file descriptors passed as SCM_RIGHTS ancillary data."""
from __future__ import annotations

import array
import os
import socket
import threading

from .codec import CodecError, Message, Parser, encode
from .protocol import MAX_FDS

_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


class ConnectionClosed(EOFError):
    """The peer closed the socket."""


class Connection:
    """Send and receive whole messages.  ``send`` is safe from several threads; ``recv``
    is meant for one reader."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._parser = Parser()
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _recv_some(self, size: int) -> None:
        data, ancdata, flags, _ = self.sock.recvmsg(size, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(payload[:len(payload) - len(payload) % a.itemsize])
                fds.extend(a)
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise CodecError("file descriptors were truncated (more than we accept)")
        if not data:
            for fd in fds:
                os.close(fd)
            raise ConnectionClosed("peer closed the connection")
        self._parser.feed(data, fds)

    def recv(self) -> Message:
        """Block until one whole message has arrived."""
        while True:
            msg = self._parser.next_message()
            if msg is not None:
                return msg
            self._recv_some(self._parser.wanted())

    def send(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        with self._send_lock:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                sent = self.sock.sendmsg([data], anc)
            else:
                sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(data[sent:])

    def send_message(self, msg: Message) -> None:
        self.send(encode(msg.request, msg.payload, msg.flags), msg.fds)
