"""The local gateway's SDS server: Envoy fetches every secret from kimpki over one gRPC stream.

Why not file-based SDS? Each file-based secret is its own subscription, and Envoy 1.40 gives
every subscription its own file watcher, i.e. its own inotify *instance*, whether the files share
a watched directory or not (measured: 100 secrets, 101 instances). Linux allows 128 per user
(``fs.inotify.max_user_instances``), so Envoy aborted above ~120 credentials. Here Envoy holds
one Aggregated Discovery Service (ADS) stream to this server on a Unix socket in the gateway's
private directory, the way istio-agent serves SDS to a real gateway: any number of secrets,
no inotify at all for them, and a changed secret is pushed at once (tens of milliseconds with
1,000 secrets). Private keys never touch the disk.

The protocol is ADS "state of the world" for one type, ``Secret``: Envoy asks for the names its
listeners use; every answer carries all of those that exist (Envoy keeps what did not change);
an ACK or NACK (a request carrying one of our nonces, for the same names) is not answered, so
a rejected secret does not loop.
A rejected secret is logged by Envoy itself (the runner forwards its warnings).

``grpcio`` and ``xds-protos`` (Envoy's generated API) come with the ``gateway`` extra and are
imported only when a gateway starts.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from kimpki.errors import OperationError

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
GRPC_MISSING = "the local gateway's SDS server needs grpcio and xds-protos: install kimpki[gateway]"
# One answer holds every secret the listeners use: let it be large (20,000 credentials ≈ 30 MB).
MAX_MESSAGE = 256 * 1024 * 1024
_CHANGED, _ENDED = object(), object()


def _protos():
    # gRPC's fork support re-starts its pollers in a forked child; Envoy is started with a fork
    # that runs Python before exec (preexec_fn), and a child whose poller then meets the fds that
    # close_fds closed aborts (SIGABRT) before it becomes Envoy. kimpki never uses gRPC in a child.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        import grpc
        from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
        from google.protobuf import any_pb2, json_format
    except ImportError:
        raise OperationError(GRPC_MISSING) from None
    return grpc, secret_pb2, ads_pb2_grpc, discovery_pb2, any_pb2, json_format


class SdsServer:
    """Serves ``Secret`` resources (dicts in Envoy's JSON shape) to Envoy over ADS on a Unix socket.

        sds = SdsServer()
        sds.start("/private/dir/sds.sock")
        sds.put({"kubernetes://kim-credential": {...}})      # pushed to Envoy at once
        sds.keep_only(["kubernetes://kim-credential"])       # drop the others
        sds.stop()
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._content: dict[str, dict] = {}  # name → the resource as given (to tell what changed)
        self._packed: dict[str, object] = {}  # name → google.protobuf.Any, packed once
        self._version = 0
        self._streams: list[queue.Queue] = []
        self._server = None
        self.address: str | None = None

    def start(self, socket_path: str) -> None:
        grpc, _, ads_pb2_grpc, *_ = _protos()
        server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="kimpki-sds"),
                             options=[("grpc.max_send_message_length", MAX_MESSAGE),
                                      ("grpc.max_receive_message_length", MAX_MESSAGE)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Ads(self), server)
        self.address = f"unix:{socket_path}"
        if not server.add_insecure_port(self.address):
            raise OperationError(f"cannot serve SDS on {socket_path}")
        server.start()
        self._server = server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait(5)

    def put(self, resources: dict[str, dict]) -> tuple[str, ...]:
        """Serve ``resources`` (new, or replacing those of the same name); push to Envoy at once
        if any changed. Returns the names that are new or changed."""
        _, secret_pb2, _, _, any_pb2, json_format = _protos()
        changed = tuple(n for n, r in resources.items() if self._content.get(n) != r)
        if not changed:
            return ()
        packed = {}
        for name in changed:
            fields = {k: v for k, v in resources[name].items() if k != "@type"}
            packed[name] = any_pb2.Any()
            packed[name].Pack(json_format.ParseDict(fields, secret_pb2.Secret()))
        with self._cond:
            self._content.update({n: resources[n] for n in changed})
            self._packed.update(packed)
            self._bump()
        return changed

    def keep_only(self, names) -> tuple[str, ...]:
        """Stop serving every secret not in ``names``; returns the names dropped."""
        with self._cond:
            removed = tuple(sorted(set(self._content) - set(names)))
            for name in removed:
                del self._content[name], self._packed[name]
            if removed:
                self._bump()
        return removed

    def _bump(self) -> None:
        self._version += 1
        for q in self._streams:
            q.put(_CHANGED)

    # -- one ADS stream -----------------------------------------------------------------------

    def _response(self, names: set[str], nonce: int):
        discovery_pb2 = _protos()[3]
        with self._cond:
            version = self._version
            resources = [self._packed[n] for n in sorted(names) if n in self._packed]
        return version, discovery_pb2.DiscoveryResponse(
            version_info=str(version), type_url=SECRET_TYPE, nonce=str(nonce), resources=resources)

    def _stream(self, requests, context):
        events: queue.Queue = queue.Queue()

        def read() -> None:
            try:
                for req in requests:
                    events.put(req)
            except Exception:  # noqa: BLE001 - the stream ended (Envoy gone, or we stop)
                pass
            events.put(_ENDED)

        context.add_callback(lambda: events.put(_ENDED))
        with self._cond:
            self._streams.append(events)
        threading.Thread(target=read, name="kimpki-sds-read", daemon=True).start()
        names: set[str] | None = None
        sent_version, nonce = None, 0
        try:
            while (event := events.get()) is not _ENDED:
                if event is _CHANGED:
                    if names is None or sent_version == self._version:
                        continue
                elif event.type_url != SECRET_TYPE:
                    continue  # only secrets come over this stream (listeners are a file)
                else:
                    asked = set(event.resource_names)
                    # An ACK or a NACK (of any answer, even an older one) for the same names:
                    # nothing to send. Answering a stale ACK would make Envoy ACK again: a loop.
                    if event.response_nonce and names == asked:
                        continue
                    names = asked
                nonce += 1
                sent_version, response = self._response(names, nonce)
                yield response
        finally:
            with self._cond:
                self._streams.remove(events)


class _Ads:
    """The ADS service: streams only (Envoy's delta ADS is not offered)."""

    def __init__(self, server: SdsServer):
        self._server = server

    def StreamAggregatedResources(self, requests, context):  # noqa: N802 - gRPC's method name
        return self._server._stream(requests, context)

    def DeltaAggregatedResources(self, requests, context):  # noqa: N802
        grpc = _protos()[0]
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the local gateway serves state-of-the-world ADS only")
