"""A real TCP proxy in front of the S3 server that can drop connections on demand.

Tests put it between boto3 and moto's server to cause real network faults: ``drop(n)``
closes the next ``n`` connections as soon as they arrive (boto3 sees the connection
closed), ``drop_all()`` closes every one until ``heal()``.
"""

from __future__ import annotations

import socket
import threading


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._drops = 0
        self.dropped = 0
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self, count: int) -> None:
        with self._lock:
            self._drops = count

    def drop_all(self) -> None:
        self.drop(10**9)

    def heal(self) -> None:
        self.drop(0)

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
                dropping = self._drops > 0
                if dropping:
                    self._drops -= 1
                    self.dropped += 1
            if dropping:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
