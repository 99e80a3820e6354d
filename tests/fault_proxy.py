"""A real TCP proxy in front of the S3 server that causes network and service faults on demand.

Tests put it between boto3 and moto's server. Each fault applies to the next ``n``
connections:

- ``drop(n)`` closes them at once (boto3 sees the connection closed); ``drop_all()`` closes
  every one until ``heal()``;
- ``cut(n, after_bytes)`` cuts the next ``n`` connections that send more than
  ``after_bytes``: it forwards that much, then closes both ends, as when an upload loses
  the network part-way through (shorter requests go through);
- ``throttle(n)`` and ``fail(n)`` answer the request as S3 does when it sheds load (503
  ``SlowDown``) or breaks (500 ``InternalError``), and close the connection.

``faulted`` counts the faults that happened.
"""

from __future__ import annotations

import socket
import threading
from http import HTTPStatus

S3_ERROR = """<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"""


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._remaining = 0
        self._fault: tuple = ()
        self.faulted = 0
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _arm(self, count: int, *fault: object) -> None:
        with self._lock:
            self._remaining, self._fault = count, fault

    def drop(self, count: int) -> None:
        self._arm(count, "drop")

    def drop_all(self) -> None:
        self.drop(10**9)

    def cut(self, count: int, after_bytes: int) -> None:
        self._arm(count, "cut", after_bytes)

    def throttle(self, count: int) -> None:
        self._arm(count, "answer", HTTPStatus.SERVICE_UNAVAILABLE, "SlowDown", "Please reduce your request rate.")

    def fail(self, count: int) -> None:
        self._arm(count, "answer", HTTPStatus.INTERNAL_SERVER_ERROR, "InternalError",
                  "We encountered an internal error. Please try again.")

    def heal(self) -> None:
        self._arm(0)

    def close(self) -> None:
        self._running = False
        self.listener.close()

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                fault = self._fault if self._remaining > 0 else ("pass",)
                if fault[0] in ("drop", "answer"):  # a cut is counted when it happens
                    self._remaining -= 1
                    self.faulted += 1
            if fault[0] == "drop":
                client.close()
            elif fault[0] == "answer":
                threading.Thread(target=self._answer, args=(client, *fault[1:]), daemon=True).start()
            else:
                limit = fault[1] if fault[0] == "cut" else None
                threading.Thread(target=self._serve, args=(client, limit), daemon=True).start()

    def _serve(self, client: socket.socket, request_limit: int | None) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(client, upstream, request_limit), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _take_cut(self) -> bool:
        with self._lock:
            if self._fault[:1] != ("cut",) or self._remaining == 0:
                return False
            self._remaining -= 1
            self.faulted += 1
            return True

    def _pipe(self, source: socket.socket, sink: socket.socket, cut_after: int | None) -> None:
        """Copy ``source`` to ``sink``; at ``cut_after`` bytes, if a cut is still due, close
        both (a cut network)."""
        sent = 0
        try:
            while data := source.recv(65536):
                if cut_after is not None and sent + len(data) >= cut_after and self._take_cut():
                    sink.sendall(data[:cut_after - sent])
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _answer(client: socket.socket, status: HTTPStatus, code: str, message: str) -> None:
        """Read the request's head (and its body, unless the client waits for ``100 Continue``,
        as boto3 does for uploads), then answer with S3's error document and close."""
        try:
            client.settimeout(10)
            received = b""
            while b"\r\n\r\n" not in received and (chunk := client.recv(65536)):
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            headers = {name.strip().lower(): value.strip() for name, _, value in
                       (line.partition(b":") for line in head.split(b"\r\n")[1:])}
            if headers.get(b"expect", b"").lower() != b"100-continue":
                remaining = int(headers.get(b"content-length", 0)) - len(body)
                while remaining > 0 and (chunk := client.recv(min(remaining, 65536))):
                    remaining -= len(chunk)
            document = S3_ERROR.format(code=code, message=message).encode()
            client.sendall(f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/xml\r\n"
                           f"Content-Length: {len(document)}\r\nConnection: close\r\n\r\n".encode() + document)
        except OSError:
            pass
        finally:
            client.close()
