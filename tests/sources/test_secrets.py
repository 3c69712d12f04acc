"""Secrets stay in: generated passwords never reach a reading's error or a log line, a trigger reads
only the variables the operator allows and sends credentials only where the operator says, and a
server echoing the token into a long error body does not get a piece of it printed."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from autoscaler.app import run_dry
from autoscaler.config.access import SecretAccess
from autoscaler.engine.types import Limits, TriggerSpec
from autoscaler.logs import configure_logging
from autoscaler.settings import Settings
from autoscaler.sources import SourceContext, build_source
from autoscaler.sources import base as source_base
from autoscaler.sources.base import redact, remember
from autoscaler.sources.logfilter import ClientLogFilter
from autoscaler.sources.prometheus import PrometheusOptions, PrometheusSource
from tests.factories import compiled_trigger, workload

# Port 9 (discard) on loopback: nothing listens, so a connect is refused at once.
REFUSED = "127.0.0.1:9"
PASSWORDS = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=6, max_size=24)


# ----------------------------------------------------------------------------------------------
# Item 12: a password of any printable characters, raw or percent-encoded, through the real paths
# (build_source, a refused connection or a URL clients would misread, the controller's log line).


def _trigger(protocol: str) -> TriggerSpec:
    variable = "RABBITMQ_MANAGEMENT_URL" if protocol == "http" else "RABBITMQ_URL"
    return compiled_trigger(
        name="backlog", type="rabbitmq", queue="jobs", protocol=protocol, connectionFromEnv=variable
    )


def _run_once(url: str, protocol: str) -> tuple[str, str]:
    """One dry-run reconcile with the trigger's URL set to `url`: its reading's error, and every
    line the autoscaler logged meanwhile (json, through the handler `autoscaler run` installs)."""
    chat = workload("chat", triggers=(_trigger(protocol),))
    variable = "RABBITMQ_MANAGEMENT_URL" if protocol == "http" else "RABBITMQ_URL"
    # Each run is a process of its own: the secrets earlier examples' sources read (a generated
    # password "failed" masks that word in every later log line) must not leak into this one.
    source_base._KNOWN_SECRETS.clear()
    stream = io.StringIO()
    handler = configure_logging("json", logging.DEBUG)
    handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        controller = asyncio.run(
            run_dry([chat], Limits(), Settings(), once=True, environ={variable: url}, stop_signals=False)
        )
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    error = controller.readings["chat"]["backlog"].error
    assert error is not None
    return error, stream.getvalue()


BASELINE_PASSWORD = "Bq7Vx2Kp9Zr4"


def _spellings(password: str) -> set[str]:
    return {password, quote(password, safe=""), json.dumps(password)[1:-1]}


def _assert_hidden(password: str, *texts: str) -> None:
    for text in texts:
        for spelling in _spellings(password):
            assert spelling not in text, (spelling, text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=PASSWORDS, encoded=st.booleans(), protocol=st.sampled_from(["http", "amqp"]))
def test_a_generated_password_never_reaches_the_error_or_the_log(
    password: str, encoded: bool, protocol: str
) -> None:
    secret = quote(password, safe="") if encoded else password
    scheme = "http" if protocol == "http" else "amqp"
    # A password that is a piece of what the autoscaler writes anyway ("worklo" of "workloads" in
    # the start-up line) would be "found" without leaking: only passwords absent from a run with
    # another password can tell.
    baseline = _run_once(f"{scheme}://user:{BASELINE_PASSWORD}@{REFUSED}/", protocol)
    assume(not any(spelling in text for text in baseline for spelling in _spellings(password)))
    url = f"{scheme}://user:{secret}@{REFUSED}/"
    error, logged = _run_once(url, protocol)
    assert "trigger 'ns/chat/backlog'" in error
    # The failure is logged (found by its fields: a password such as "failed" masks that word in it).
    records = [json.loads(line) for line in logged.splitlines() if line.strip()]
    assert any(r["level"] == "warning" and r.get("trigger") == "backlog" for r in records), logged
    _assert_hidden(password, error, logged)


@pytest.mark.parametrize(
    ("password", "protocol"),
    [
        ("pa/ss#word", "http"),  # the case: the old redaction stopped at '/'
        ("s3cr3t#frag", "amqp"),  # '#' starts a fragment: clients read 's3cr3t' as a port
        ("Xy@zw?q=1", "http"),  # "@" and "?" move the host and the query
        ("100%sure", "amqp"),  # '%' that starts no escape
    ],
)
def test_an_unencoded_password_is_refused_saying_how_to_fix_it(password: str, protocol: str) -> None:
    scheme = "http" if protocol == "http" else "amqp"
    error, logged = _run_once(f"{scheme}://user:{password}@{REFUSED}/", protocol)
    assert "must be percent-encoded" in error
    _assert_hidden(password, error, logged)


def test_redact_masks_the_password_wherever_the_url_is_misread() -> None:
    # The old regex kept everything after a '/' in the password.
    from autoscaler.sources.base import secrets_of_url

    url = "http://user:pa/ss#x@host:15672"
    text = f"InvalidURL: {url} and host 'user' port 'pa/ss#x'"
    assert "pa/ss#x" not in redact(text, secrets_of_url(url))
    # A password made of the mask's own characters cannot be masked: the text is withheld.
    assert "**" not in redact("token ** here", ["**"])


# ----------------------------------------------------------------------------------------------
# A fake Prometheus that records requests and echoes the Authorization header in a long error body.


class EchoServer(ThreadingHTTPServer):
    padding = 0
    requests: list[dict[str, str]]


class _Echo(BaseHTTPRequestHandler):
    server: EchoServer

    def do_GET(self) -> None:  # http.server's name
        self.server.requests.append(dict(self.headers))
        body = "x" * self.server.padding + f"bad request; you sent {self.headers.get('Authorization')}"
        data = (body + " " + "y" * 400).encode()
        self.send_response(400)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer(("127.0.0.1", 0), _Echo)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: EchoServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


TOKEN = "tok-9f3a7c21be44d0a6e8b5c2f19d7e6a3b"


# Item 14: the exception text is "HTTP Status Code 400 (b'<body>')"; the paddings put the 300th
# character before, inside (at several places) and after the echoed token.
@pytest.mark.parametrize("padding", [200, 230, 240, 250, 260, 270, 290])
def test_a_server_echoing_the_token_gets_no_piece_of_it_printed(echo: EchoServer, padding: int) -> None:
    echo.padding = padding
    source = PrometheusSource(
        "'ns/wl/ttft'",
        PrometheusOptions(query="up", auth_modes="bearer", token_from_env="PROMETHEUS_TOKEN"),
        _url(echo),
        environ={"PROMETHEUS_TOKEN": TOKEN},
        clock=lambda: 0.0,
        access=SecretAccess(prometheus_url=_url(echo)),
    )

    async def go() -> str | None:
        try:
            return (await source.read()).error
        finally:
            await source.close()

    error = asyncio.run(go())
    assert echo.requests and echo.requests[0]["Authorization"] == f"Bearer {TOKEN}"  # it was sent
    assert error is not None and "HTTP Status Code 400" in error
    assert not any(TOKEN[:n] in error for n in range(6, len(TOKEN) + 1)), error


def test_a_server_echoing_basic_auth_gets_neither_the_password_nor_the_header(echo: EchoServer) -> None:
    source = PrometheusSource(
        "'ns/wl/ttft'",
        PrometheusOptions(
            query="up", auth_modes="basic", username_from_env="PROM_USER", password_from_env="PROM_PASSWORD"
        ),
        _url(echo),
        environ={"PROM_USER": "reader", "PROM_PASSWORD": "Very-Secret-pw"},
        clock=lambda: 0.0,
        access=SecretAccess(
            frozenset({("PROM_USER", "usernameFromEnv"), ("PROM_PASSWORD", "passwordFromEnv")}),
            prometheus_url=_url(echo),
        ),
    )
    error = asyncio.run(source.read()).error
    header = base64.b64encode(b"reader:Very-Secret-pw").decode()
    assert echo.requests[0]["Authorization"] == f"Basic {header}"
    assert error is not None and header not in error and "Very-Secret-pw" not in error


# ----------------------------------------------------------------------------------------------
# Item 13: which variables a trigger may read, and where credentials may go.


class RecordingEnviron(Mapping[str, str]):
    """The environment, remembering every name looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.looked_up: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.looked_up.append(key)
        return self._values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.looked_up.append(key)
        return self._values.get(key, default)  # type: ignore[call-overload]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


BROKER_URL = "amqp://app:broker-Secret-42@rabbitmq.queues:5672/"


def _prometheus_trigger(**options: object) -> TriggerSpec:
    return compiled_trigger(name="ttft", type="prometheus", target=1.0, query="up", **options)


def _read_with(settings: Settings, trigger: TriggerSpec, environ: Mapping[str, str]) -> str | None:
    context = SourceContext(environ, prometheus_url=settings.prometheus_url)
    source = build_source(workload("chat"), trigger, settings, context=context)

    async def go() -> str | None:
        try:
            return (await source.read()).error
        finally:
            await source.close()

    return asyncio.run(go())


def test_a_configmap_cannot_send_the_broker_url_to_its_own_server(echo: EchoServer) -> None:
    # The attack: serverAddress the attacker's, the broker URL as the bearer token.
    attack = _prometheus_trigger(serverAddress=_url(echo), authModes="bearer", tokenFromEnv="RABBITMQ_URL")
    environ = RecordingEnviron({"RABBITMQ_URL": BROKER_URL})
    error = _read_with(Settings(), attack, environ)
    assert error is not None and "'ns/chat/ttft'" in error
    assert "serverAddress" in error and "AUTOSCALER_ALLOWED_PROMETHEUS_HOSTS" in error
    assert echo.requests == [] and environ.looked_up == []

    # Even with the host allowed, RABBITMQ_URL is for connectionFromEnv only.
    host = _url(echo).removeprefix("http://")
    error = _read_with(Settings(allowed_prometheus_hosts=[host]), attack, environ)
    assert error is not None and "AUTOSCALER_ALLOWED_SECRET_ENV" in error
    assert "tokenFromEnv: environment variable RABBITMQ_URL is allowed only for connectionFromEnv" in error
    assert "'RABBITMQ_URL:tokenFromEnv'" in error  # the exact entry that would allow it
    assert echo.requests == [] and environ.looked_up == []


def test_a_variable_outside_the_allow_list_is_never_read() -> None:
    environ = RecordingEnviron({"AWS_SECRET_ACCESS_KEY": "aws-Secret"})
    rabbit = compiled_trigger(
        name="backlog", type="rabbitmq", queue="q", connectionFromEnv="AWS_SECRET_ACCESS_KEY"
    )
    error = _read_with(Settings(), rabbit, environ)
    assert error is not None and "'ns/chat/backlog'" in error
    assert "connectionFromEnv: environment variable AWS_SECRET_ACCESS_KEY is not allowed" in error
    assert "add 'AWS_SECRET_ACCESS_KEY:connectionFromEnv' to AUTOSCALER_ALLOWED_SECRET_ENV" in error
    assert environ.looked_up == []


def test_the_operator_allows_a_variable_for_one_option_and_names_where_credentials_go(
    echo: EchoServer,
) -> None:
    settings = Settings(allowed_secret_env=["TEAM_TOKEN:tokenFromEnv"], prometheus_url=_url(echo))
    trigger = _prometheus_trigger(authModes="bearer", tokenFromEnv="TEAM_TOKEN")
    error = _read_with(settings, trigger, {"TEAM_TOKEN": TOKEN})
    assert echo.requests and echo.requests[0]["Authorization"] == f"Bearer {TOKEN}"
    assert error is not None and "HTTP Status Code 400" in error  # the echo server's answer, read


def test_an_allowed_prometheus_hosts_list_bounds_every_server_address(echo: EchoServer) -> None:
    trigger = _prometheus_trigger(serverAddress=_url(echo))  # no credentials
    assert "HTTP Status Code 400" in (_read_with(Settings(), trigger, {}) or "")  # default: any host
    error = _read_with(Settings(allowed_prometheus_hosts=["prometheus.monitoring:9090"]), trigger, {})
    assert error is not None and "is not in AUTOSCALER_ALLOWED_PROMETHEUS_HOSTS" in error
    assert len(echo.requests) == 1


# ----------------------------------------------------------------------------------------------
# Item 19: aiormq's reconnect errors, thinned; and secrets masked in library log records.


def _record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_client_log_filter_lets_one_reconnect_error_a_minute_through_with_a_count() -> None:
    now = [0.0]
    log_filter = ClientLogFilter(clock=lambda: now[0])
    passed: list[str] = []
    for second in range(150):  # one reconnect attempt a second for two and a half minutes
        now[0] = float(second)
        record = _record(
            "aiormq.connection", "error when creating transport: %r", ConnectionRefusedError(111)
        )
        if log_filter.filter(record):
            passed.append(record.getMessage())
    assert len(passed) == 3  # at 0 s, 60 s and 120 s
    assert "more like this" not in passed[0]
    assert passed[1].endswith("(59 more like this in the last 60s not shown)")
    # Our own records are never thinned.
    assert all(log_filter.filter(_record("autoscaler.controller", "trigger failed")) for _ in range(5))


def test_client_log_filter_masks_secrets_sources_have_read() -> None:
    remember(["lib-Secret-77"])
    record = _record(
        "aio_pika.robust_connection", 'Connection attempt to "%s" failed', "amqp://u:lib-Secret-77@h/"
    )
    assert ClientLogFilter().filter(record)
    assert "lib-Secret-77" not in record.getMessage()
