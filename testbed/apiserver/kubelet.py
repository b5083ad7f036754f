"""The API server's side of pods/log, pods/exec, pods/attach and pods/portforward.

The server finds the pod's node (``spec.nodeName``), the node's kubelet endpoint
(``status.addresses`` InternalIP and ``status.daemonEndpoints.kubeletEndpoint.Port``,
default 10250) and proxies to it over HTTPS with the API server's kubelet client cert.
The kubelet endpoint contract (what ``testbed/apiserver/kubeletserver.py`` implements):

- ``GET /containerLogs/<ns>/<pod>/<container>?follow&previous&tailLines&timestamps&sinceSeconds&limitBytes``
  -> ``text/plain`` body, streamed while ``follow``;
- ``GET /exec/<ns>/<pod>/<container>?command=..&command=..&stdin&stdout&stderr&tty`` and
  ``GET /attach/...``: a WebSocket (subprotocol ``v5.channel.k8s.io`` or ``v4.channel.k8s.io``)
  whose messages are relayed verbatim between kubectl and the kubelet;
- ``GET /portForward/<ns>/<pod>?port=<n>``: a WebSocket (subprotocol ``v4.channel.k8s.io``):
  channel 0 data, channel 1 errors, the first message on each channel is the port
  (uint16 little-endian). kubectl's SPDY (direct or tunnelled in WebSocket) ends here in the
  API server: each of kubectl's stream pairs becomes one kubelet WebSocket. A direct
  ``Upgrade: SPDY/3.1`` (KUBECTL_PORT_FORWARD_WEBSOCKETS=false) is refused with 400.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import urllib.parse
from typing import Any

import aiohttp
from aiohttp import web

from testbed.apiserver import spdy, status

log = logging.getLogger("apiserver.kubelet")

EXEC_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
                  "channel.k8s.io"]
PORTFORWARD_WS = "SPDY/3.1+portforward.k8s.io"


class KubeletProxy:
    """Reaches a node's kubelet for log/exec/attach/portforward."""

    def __init__(self, h: Any):
        self.h = h
        self._session: aiohttp.ClientSession | None = None

    def ssl_context(self) -> ssl.SSLContext:
        o = self.h.server.opts
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if o.kubelet_certificate_authority:
            ctx.load_verify_locations(o.kubelet_certificate_authority)
        else:  # kube-apiserver's default: kubelet serving certs are not verified without a CA
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert = o.kubelet_client_certificate or o.path("", "apiserver-kubelet-client.crt")
        key = o.kubelet_client_key or o.path("", "apiserver-kubelet-client.key")
        ctx.load_cert_chain(cert, key)
        return ctx

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context()),
                                                  timeout=aiohttp.ClientTimeout(total=None, connect=5))
        return self._session

    async def locate(self, r: Any) -> tuple[dict, str]:
        """(pod, kubelet base URL), or the real server's errors."""
        e = await self.h.get_entry(r.rt, r.name, r.namespace)
        pod = e.obj
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            raise status.bad_request(f"pod {r.name} does not have a host assigned")
        nrt = self.h.registry.get("", "v1", "nodes")
        ne = await self.h.storage.get(nrt.key(node_name, None))
        if ne is None:
            raise status.not_found("nodes", "", node_name)
        st = ne.obj.get("status") or {}
        addrs = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
        host = addrs.get("InternalIP") or addrs.get("Hostname") or addrs.get("ExternalIP")
        if not host:
            raise status.APIError(500, "InternalError", f"no preferred addresses found; known addresses: "
                                  f"{st.get('addresses') or []}")
        port = ((st.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port") or \
            self.h.server.opts.kubelet_port
        if ":" in host:
            host = f"[{host}]"
        return pod, f"https://{host}:{port}"

    def container(self, pod: dict, r: Any, what: str) -> str:
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        inits = [c.get("name") for c in (pod.get("spec") or {}).get("initContainers") or []]
        want = r.q("container")
        if want:
            if want not in names + inits:
                raise status.bad_request(f"container {want} is not valid for pod {r.name}")
            return want
        if len(names) == 1:
            return names[0]
        raise status.bad_request(f"a container name must be specified for pod {r.name}, choose one of: "
                                 f"[{' '.join(names)}]" + (f" or one of the init containers: [{' '.join(inits)}]"
                                                           if inits else ""))

    async def handle(self, r: Any) -> web.StreamResponse:
        if r.sub == "log":
            if r.method != "GET":
                raise status.method_not_allowed()
            return await self.logs(r)
        if r.sub in ("exec", "attach"):
            if r.method not in ("GET", "POST"):
                raise status.method_not_allowed()
            return await self.exec(r)
        if r.sub == "portforward":
            if r.method not in ("GET", "POST"):
                raise status.method_not_allowed()
            return await self.portforward(r)
        raise status.page_not_found()

    # --- logs -------------------------------------------------------------------------------
    async def logs(self, r: Any) -> web.StreamResponse:
        pod, base = await self.locate(r)
        c = self.container(pod, r, "log")
        q = {k: r.q(k) for k in ("follow", "previous", "tailLines", "timestamps", "sinceSeconds", "sinceTime",
                                 "limitBytes") if r.q(k)}
        url = f"{base}/containerLogs/{r.namespace}/{r.name}/{c}" + ("?" + urllib.parse.urlencode(q) if q else "")
        try:
            upstream = await self.session().get(url)
        except (aiohttp.ClientError, OSError) as exc:
            raise status.APIError(500, "InternalError", f"Get \"{url}\": {exc}") from None
        if upstream.status >= 400:
            text = (await upstream.read()).decode(errors="replace").strip()
            upstream.release()
            raise status.bad_request(text or f"kubelet answered {upstream.status}")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        await resp.prepare(r.http)
        try:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
        except (ConnectionResetError, aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            upstream.release()
        try:
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    # --- exec / attach ----------------------------------------------------------------------
    async def exec(self, r: Any) -> web.StreamResponse:
        pod, base = await self.locate(r)
        c = self.container(pod, r, r.sub)
        if r.sub == "exec" and not r.query.getall("command", []):
            raise status.bad_request("you must specify at least 1 command")
        path = "exec" if r.sub == "exec" else "attach"
        q = [(k, v) for k, v in r.query.items() if k in ("command", "stdin", "stdout", "stderr", "tty")]
        url = f"{base}/{path}/{r.namespace}/{r.name}/{c}?" + urllib.parse.urlencode(q)
        if r.http.headers.get("Upgrade", "").lower() != "websocket":
            # kubectl falls back to SPDY when its WebSocket was refused: name the kubelet's reason
            text = await self._kubelet_text(url)
            if text and "websocket" not in text.lower():
                raise status.bad_request(text)
            raise status.bad_request(f"Upgrade request required: {r.sub} is served over WebSocket "
                                     f"({', '.join(EXEC_PROTOCOLS[:2])}); SPDY is not")
        offered = [p.strip() for p in r.http.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        proto = next((p for p in offered if p in EXEC_PROTOCOLS), None)
        if proto is None:
            raise status.bad_request(f"no supported subprotocol among {offered} (supported: {EXEC_PROTOCOLS})")
        try:
            upstream = await self.session().ws_connect(url, protocols=[proto], autoping=True, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            # the kubelet refused (unknown pod/container, attach not served): say what it said
            text = await self._kubelet_text(url)
            raise status.APIError(exc.status if exc.status in (400, 404) else 500,
                                  "BadRequest" if exc.status == 400 else "NotFound" if exc.status == 404
                                  else "InternalError", text or f"error dialing backend: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise status.APIError(500, "InternalError", f"error dialing backend: {exc}") from None
        down = web.WebSocketResponse(protocols=[proto], autoping=True, max_msg_size=0)
        await down.prepare(r.http)
        await _relay(down, upstream)
        return down

    async def _kubelet_text(self, url: str) -> str:
        """The kubelet's plain-text answer to a refused upgrade (asked again without it)."""
        try:
            async with self.session().get(url) as resp:
                return (await resp.text()).strip()
        except (aiohttp.ClientError, OSError):
            return ""

    # --- port-forward -----------------------------------------------------------------------
    async def portforward(self, r: Any) -> web.StreamResponse:
        pod, base = await self.locate(r)
        offered = [p.strip() for p in r.http.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        upgrade = r.http.headers.get("Upgrade", "").lower()
        if upgrade == "websocket" and PORTFORWARD_WS in offered:
            ws = web.WebSocketResponse(protocols=[PORTFORWARD_WS], autoping=True, max_msg_size=0)
            await ws.prepare(r.http)

            async def send(frame: bytes) -> None:
                await ws.send_bytes(frame)

            sess = spdy.Session(send, lambda s: self._pf_stream(s, sess, base, r))
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    try:
                        await sess.feed(msg.data)
                    except spdy.ProtocolError as exc:
                        log.info("port-forward: %s", exc)
                        break
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                    break
            await self._pf_close(sess)
            return ws
        raise status.bad_request(f"Upgrade request required: port-forward is served over WebSocket "
                                 f"({PORTFORWARD_WS}, kubectl's default); a direct SPDY/3.1 upgrade is not")

    async def _pf_close(self, sess: spdy.Session) -> None:
        for s in sess.streams.values():
            s.incoming.put_nowait(b"")

    async def _pf_stream(self, s: spdy.Stream, sess: spdy.Session, base: str, r: Any) -> None:
        """Pair each request's error and data streams; the data stream starts a kubelet WebSocket."""
        typ = s.headers.get("streamtype")
        req = s.headers.get("requestid", "")
        pairs = sess.__dict__.setdefault("pf_pairs", {})
        entry = pairs.setdefault(req, {})
        entry[typ] = s
        if "data" in entry and "error" in entry and not entry.get("started"):
            entry["started"] = True
            asyncio.ensure_future(self._pf_forward(entry["data"], entry["error"], s.headers.get("port", ""), base, r))

    async def _pf_forward(self, data: spdy.Stream, err: spdy.Stream, port: str, base: str, r: Any) -> None:
        try:
            p = int(port)
            if not 0 < p < 65536:
                raise ValueError
        except ValueError:
            await err.write(f"invalid port {port!r}".encode(), fin=True)
            await data.close()
            return
        url = f"{base}/portForward/{r.namespace}/{r.name}?port={p}"
        try:
            ws = await self.session().ws_connect(url, protocols=["v4.channel.k8s.io"], max_msg_size=0)
        except (aiohttp.ClientError, OSError) as exc:
            await err.write(f"error dialing backend: {exc}".encode(), fin=True)
            await data.close()
            return

        async def up() -> None:
            while True:
                chunk = await data.incoming.get()
                if not chunk:
                    break
                await ws.send_bytes(b"\x00" + chunk)
            await ws.close()

        async def down() -> None:
            seen_port = {0: False, 1: False}
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    continue
                ch, payload = msg.data[0], msg.data[1:]
                if ch in seen_port and not seen_port[ch]:
                    seen_port[ch] = True  # the port number the kubelet echoes first
                    if len(payload) == 2 and struct.unpack("<H", payload)[0] == p:
                        continue
                if ch == 0 and payload:
                    await data.write(payload)
                elif ch == 1 and payload:
                    await err.write(payload)
            await data.close()
            await err.close()

        t_up = asyncio.ensure_future(up())
        try:
            await down()
        finally:
            t_up.cancel()


async def _relay(a: web.WebSocketResponse, b: aiohttp.ClientWebSocketResponse) -> None:
    """Relay messages both ways until either side closes."""

    async def a_to_b() -> None:
        async for msg in a:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await b.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await b.send_str(msg.data)
            else:
                break
        await b.close()

    async def b_to_a() -> None:
        async for msg in b:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await a.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await a.send_str(msg.data)
            else:
                break
        await a.close()

    t1 = asyncio.ensure_future(a_to_b())
    t2 = asyncio.ensure_future(b_to_a())
    done, pending = await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_COMPLETED)
    # let the other direction drain what is already in flight, then stop
    try:
        await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
    except TimeoutError:
        for t in pending:
            t.cancel()
