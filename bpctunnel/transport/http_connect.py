"""
HTTP CONNECT proxies: L{HTTPProxy} and its URL, and L{HTTPConnectEndpoint},
an C{IStreamClientEndpoint} that asks the proxy for a tunnel and then hands
the raw connection to the caller's protocol.  Wrapped in C{wrapClientTLS},
TLS runs end to end through the proxy: the proxy sees only the host and
port.  (Which proxy a client uses is decided in L{bpctunnel.client.config}.)

No reactor is imported here; the endpoint takes the proxy's endpoint and a
clock.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.address import HostnameAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bpctunnel.errors import BpcTunnelError, ConfigError

#: The most a proxy may send before the end of its answer's headers.
MAX_HEADER_BYTES = 16 * 1024

#: Seconds a proxy has to answer CONNECT (it may have to connect onward first).
DEFAULT_TIMEOUT = 30.0

_STATUS_LINE = re.compile(r"HTTP/\d\.\d (\d{3})(?:[ \t]+(.*))?")
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_PASSWORD = re.compile(r"(//[^/@:]*):[^/@]*@")


class ProxyError(BpcTunnelError):
    """
    The proxy could not be reached, refused the tunnel, or answered something
    other than HTTP.  C{status} and C{reason} hold the proxy's answer when it
    gave one.
    """

    def __init__(self, message: str, status: int | None = None, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


def redacted(url: str) -> str:
    """C{url} with any password replaced by C{***}, for messages and logs."""
    return _PASSWORD.sub(r"\1:***@", url)


def host_port(host: str, port: int) -> str:
    """C{host:port}, with an IPv6 address in brackets (as CONNECT and URLs want it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class HTTPProxy:
    """An HTTP proxy that the tunnel goes through, with CONNECT."""

    host: str = attrs.field(validator=attrs.validators.instance_of(str))
    port: int = attrs.field(validator=[attrs.validators.instance_of(int),
                                       attrs.validators.ge(1), attrs.validators.le(65535)])
    #: The Proxy-Authorization header value ("Basic ..."), or None.
    authorization: str | None = attrs.field(default=None, repr=False)

    @property
    def url(self) -> str:
        """C{http://host:port}, without credentials."""
        return f"http://{host_port(self.host, self.port)}"


def parse_proxy_url(url: str, name: str = "proxy", where: str = "",
                    scheme_optional: bool = False, hint: str = "") -> HTTPProxy:
    """
    An L{HTTPProxy} from C{http://[USER:PASSWORD@]HOST:PORT}.  C{name} and
    C{where} say where the URL came from in the L{ConfigError}; the
    password never appears in it.  With C{scheme_optional}, C{HOST:PORT}
    means http:// (as curl reads C{https_proxy}).
    """
    where = f" {where}" if where else ""
    shown = f"{name} = {redacted(url)}{where}"
    text = url.strip()
    if scheme_optional and "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    example = "http://proxy.example.org:3128"
    if parts.scheme.lower() != "http":
        raise ConfigError(
            f"{shown} must be an http:// URL such as {example} (bpctunnel asks the proxy "
            f"for a tunnel with CONNECT; TLS to the server stays end to end){hint}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{shown} has an invalid port number{hint}") from None
    if not parts.hostname:
        raise ConfigError(f"{shown} names no host; use a URL such as {example}{hint}")
    if port is None:
        raise ConfigError(f"{shown} has no port; add the proxy's port, e.g. "
                          f"http://{host_port(parts.hostname, 3128)}{hint}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{shown} must be just http://[USER:PASSWORD@]HOST:PORT{hint}")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    return HTTPProxy(parts.hostname, port, authorization)


def connect_request(host: str, port: int, authorization: str | None = None) -> bytes:
    """The CONNECT request for C{host:port}."""
    target = host_port(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if authorization is not None:
        lines.append(f"Proxy-Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


#: What to do about a refusal, by status.
_ADVICE = {
    407: "the proxy wants a user name and password: "
         "give them as http://USER:PASSWORD@HOST:PORT",
    403: "the proxy does not allow this destination; ask its admin to allow CONNECT to {target}",
    405: "the proxy does not allow CONNECT; ask its admin to allow CONNECT to {target}",
}


class _ProxyConnectProtocol(Protocol):
    """
    Sends CONNECT, reads the proxy's answer, then relays the connection to
    the protocol the caller's factory builds (which writes to the same
    transport).
    """

    def __init__(self, attempt: _ConnectAttempt):
        self.attempt = attempt
        self.buffer = b""
        self.wrapped = None
        self.finished = False
        self.timer = None

    def connectionMade(self) -> None:
        endpoint = self.attempt.endpoint
        self.transport.write(connect_request(endpoint.host, endpoint.port, endpoint.authorization))
        if endpoint.clock is not None:
            self.timer = endpoint.clock.callLater(endpoint.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        if self.finished:
            return
        self.buffer += data
        self._parse()

    def _parse(self) -> None:
        while not self.finished:
            # Anything but "HTTP/" first (a TLS alert, an SSH banner) is not a proxy.
            if not b"HTTP/".startswith(self.buffer[:5]):
                return self._garbage()
            end = _END_OF_HEADERS.search(self.buffer)
            if end is None or end.start() > MAX_HEADER_BYTES:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    return self._fail(ProxyError(
                        f"{self.attempt.endpoint.proxy_name} sent more than {MAX_HEADER_BYTES} "
                        f"bytes of headers in answer to CONNECT {self.attempt.target}"))
                if b"\n" in self.buffer:
                    # Check the status line as soon as it is complete.
                    self._status(self.buffer.split(b"\n", 1)[0])
                return
            head, rest = self.buffer[:end.start()], self.buffer[end.end():]
            status = self._status(head.split(b"\n", 1)[0])
            if status is None:
                return
            code, reason = status
            if 100 <= code < 200:
                # An interim answer; the real one follows.
                self.buffer = rest
                continue
            if 200 <= code < 300:
                return self._established(rest)
            return self._refused(code, reason)

    def _refused(self, code: int, reason: str) -> None:
        advice = _ADVICE.get(code)
        if advice is None and code >= 500:
            advice = ("the proxy could not reach {target}: check the server's address and "
                      "that it is running")
        advice = f"; {advice.format(target=self.attempt.target)}" if advice else ""
        self._fail(ProxyError(
            f"{self.attempt.endpoint.proxy_name} refused CONNECT {self.attempt.target}: "
            f"{code} {reason}".rstrip() + advice, status=code, reason=reason))

    def _status(self, line: bytes) -> tuple[int, str] | None:
        text = line.rstrip(b"\r").decode("latin-1")
        match = _STATUS_LINE.fullmatch(text)
        if match is None:
            self._garbage()
            return None
        return int(match.group(1)), (match.group(2) or "").strip()

    def _garbage(self) -> None:
        self._fail(ProxyError(
            f"{self.attempt.endpoint.proxy_name} answered CONNECT {self.attempt.target} with "
            f"something that is not HTTP: {self.buffer[:60]!r}; check that it is an HTTP proxy"))

    def _established(self, rest: bytes) -> None:
        self.finished = True
        self._cancel_timer()
        endpoint = self.attempt.endpoint
        self.buffer = b""
        try:
            wrapped = self.attempt.factory.buildProtocol(
                HostnameAddress(endpoint.host.encode("utf-8"), endpoint.port))
        except Exception:
            self.transport.loseConnection()
            self.attempt.failed(Failure())
            return
        if wrapped is None:
            self.transport.loseConnection()
            self.attempt.failed(Failure(ProxyError(
                f"the protocol factory refused the tunnel to {self.attempt.target}")))
            return
        endpoint.log.info("{proxy_name} opened a tunnel to {target}",
                          proxy_name=endpoint.proxy_name, target=self.attempt.target)
        self.wrapped = wrapped
        wrapped.makeConnection(self.transport)
        self.attempt.succeeded(wrapped)
        if rest and self.wrapped is not None:
            wrapped.dataReceived(rest)

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(ProxyError(
            f"{self.attempt.endpoint.proxy_name} did not answer CONNECT {self.attempt.target} "
            f"within {self.attempt.endpoint.timeout:g} seconds"), abort=True)

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _fail(self, error: ProxyError, abort: bool = False) -> None:
        self.finished = True
        self._cancel_timer()
        self.attempt.failed(Failure(error))
        if self.transport is not None:
            if abort:
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()

    def abort(self) -> None:
        """Give up silently (the caller cancelled)."""
        self.finished = True
        self._cancel_timer()
        if self.wrapped is None and self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        self._cancel_timer()
        if self.wrapped is not None:
            wrapped, self.wrapped = self.wrapped, None
            wrapped.connectionLost(reason)
        elif not self.finished:
            self.finished = True
            self.attempt.failed(Failure(ProxyError(
                f"{self.attempt.endpoint.proxy_name} closed the connection before answering "
                f"CONNECT {self.attempt.target}")))


class _ProxyConnectFactory(ClientFactory):
    """Builds the one L{_ProxyConnectProtocol} of a connection attempt."""

    noisy = False

    def __init__(self, attempt: _ConnectAttempt):
        self.attempt = attempt

    def doStart(self) -> None:
        # The caller's factory is in use for as long as the proxy connection is.
        self.attempt.factory.doStart()

    def doStop(self) -> None:
        self.attempt.factory.doStop()

    def buildProtocol(self, addr):
        protocol = _ProxyConnectProtocol(self.attempt)
        protocol.factory = self
        self.attempt.protocol = protocol
        return protocol


class _ConnectAttempt:
    """One C{connect()}: the result Deferred, and what cancelling it must stop."""

    def __init__(self, endpoint: HTTPConnectEndpoint, factory):
        self.endpoint = endpoint
        self.factory = factory
        self.target = host_port(endpoint.host, endpoint.port)
        self.protocol: _ProxyConnectProtocol | None = None
        self.result: Deferred = Deferred(self._cancel)
        self.to_proxy: Deferred | None = None
        self.cancelled = False

    def start(self) -> Deferred:
        self.to_proxy = self.endpoint.proxy_endpoint.connect(_ProxyConnectFactory(self))
        self.to_proxy.addErrback(self._unreachable)
        return self.result

    def _unreachable(self, failure: Failure) -> None:
        self.failed(Failure(ProxyError(
            f"cannot reach {self.endpoint.proxy_name}: {failure.getErrorMessage()}")))

    def _cancel(self, result: Deferred) -> None:
        # Deferred.cancel fails self.result with CancelledError once this returns.
        self.cancelled = True
        if self.to_proxy is not None and not self.to_proxy.called:
            self.to_proxy.cancel()
        elif self.protocol is not None:
            self.protocol.abort()

    def succeeded(self, protocol) -> None:
        if not self.result.called:
            self.result.callback(protocol)

    def failed(self, failure: Failure) -> None:
        if self.result.called or self.cancelled:
            return
        self.endpoint.log.error("{error}", error=failure.getErrorMessage(),
                                proxy_name=self.endpoint.proxy_name, target=self.target)
        # (A log observer may have cancelled the attempt meanwhile.)
        if not self.result.called:
            self.result.errback(failure)


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    """
    Connects to C{host:port} through an HTTP proxy reached by
    C{proxy_endpoint}, with C{CONNECT}.

    C{connect(factory)} fires with the protocol C{factory} built once the
    proxy answered 2xx (the protocol gets the proxy connection's transport,
    and any bytes after the answer); otherwise it fails with a
    L{ProxyError} in the proxy's words, which is also logged, and the
    connection is closed.

    @param authorization: the C{Proxy-Authorization} value, if any.
    @param clock: an C{IReactorTime} for the C{timeout} on the proxy's answer
        (no timeout without one).
    @param proxy_url: how messages name the proxy.
    """

    log = Logger()

    def __init__(self, proxy_endpoint, host: str, port: int, authorization: str | None = None, *,
                 clock=None, timeout: float = DEFAULT_TIMEOUT, proxy_url: str | None = None):
        self.proxy_endpoint = proxy_endpoint
        self.host = host
        self.port = port
        self.authorization = authorization
        self.clock = clock
        self.timeout = timeout
        self.proxy_name = f"the proxy {redacted(proxy_url)}" if proxy_url else "the proxy"

    def __repr__(self) -> str:
        return f"<HTTPConnectEndpoint {host_port(self.host, self.port)} via {self.proxy_name[4:]}>"

    def connect(self, protocolFactory) -> Deferred:
        return _ConnectAttempt(self, protocolFactory).start()
