"""OpenTelemetry traces, off unless configured.

With FABRIC_OTEL_ENDPOINT set (an OTLP/HTTP collector, `http://collector:4318`), every
process exports its spans there in batches, under FABRIC_OTEL_SERVICE_NAME:

    fabric.call          one gRPC or Flight SQL call (the door); rpc.method, request id,
                         status
    fabric.query         the engine's part of a query: connection, protocol, rows, bytes,
                         cache
    fabric.compile       compiling (or the statement cache's hit)
    fabric.admission     the wait for admission (a slot at the source, the caller's share)
    fabric.source        the query at its source: db.system (the connector kind) and the
                         connection's name, rows read
    fabric.bus.forward   the platform's forwarding of a query to a runtime replica; the W3C
                         trace context travels in the NATS message headers, so
    fabric.bus.serve     the replica's serving of it is a child of the forward, and one
                         trace runs platform -> bus -> replica -> source.

Attributes carry names, shapes and counts: never a parameter value, a SQL text (literals
or not) or a row.

Off, `span` returns one shared do-nothing context manager (no span, no clock read), and
OpenTelemetry is not even imported (a process, the CLI included, starts without it).

Spans are not attached as OpenTelemetry's "current" context: a query's spans stay open
across the yields of async generators, which may be finished in another task's context
(a client that left, Flight SQL reading in DoGet what GetFlightInfo started). Each span's
context is kept in this module's own context variable instead, set when it starts and
reset (where that is still possible) when it ends; children take their parent from it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "configure_tracing",
    "extract",
    "flush",
    "inject",
    "install",
    "span",
    "tracing_enabled",
]

AttributeValue = str | bool | int | float

_tracer: Tracer | None = None
_provider: Any | None = None
_propagator: Any = None
_CONTEXT: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "fabric_trace_context", default=None
)


class _NoSpan:
    """What `span` yields when tracing is off: setting attributes does nothing."""

    __slots__ = ()

    def set(self, key: str, value: AttributeValue) -> None:
        return None

    def fail(self, status: str) -> None:
        return None


class _LiveSpan:
    __slots__ = ("failed", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.failed = False

    def set(self, key: str, value: AttributeValue) -> None:
        self.span.set_attribute(key, value)

    def fail(self, status: str) -> None:
        """The operation ended in `status` (a gRPC status name or an error code); the
        first reason given stands."""
        if self.failed:
            return
        self.failed = True
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("fabric.status", status)
        self.span.set_status(Status(StatusCode.ERROR, status))


SpanHandle = _NoSpan | _LiveSpan
_NO_SPAN = _NoSpan()


class _Off:
    """A do-nothing context manager shared by every call while tracing is off."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return _NO_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None


_OFF = _Off()


def tracing_enabled() -> bool:
    return _tracer is not None


def install(provider: Any | None) -> None:
    """Trace with `provider` (an SDK `TracerProvider`) from now on; None: off."""
    global _tracer, _provider, _propagator
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("fabric")
    if _tracer is not None and _propagator is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = TraceContextTextMapPropagator()


def flush(timeout: float = 5.0) -> None:
    """Export the spans still held (a process that stops); nothing while off."""
    if _provider is not None:
        _provider.force_flush(int(timeout * 1000))


def configure_tracing(endpoint: str, service_name: str) -> Any | None:
    """Export spans to the OTLP/HTTP collector at `endpoint` (nothing when empty): the
    provider, to shut down (flushing what is left) when the process stops."""
    if not endpoint:
        install(None)
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return provider


def span(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    parent: Context | None = None,
) -> contextlib.AbstractContextManager[SpanHandle]:
    """A span for the block, child of `parent` or of the span this task is in; the
    handle sets attributes (counts learned on the way). An exception leaving the block
    marks it failed with the exception's type (never its text)."""
    if _tracer is None:
        return _OFF
    return _live(_tracer, name, attributes, parent)


@contextlib.contextmanager
def _live(
    tracer: Tracer,
    name: str,
    attributes: Mapping[str, AttributeValue] | None,
    parent: Context | None,
) -> Iterator[SpanHandle]:
    from opentelemetry import trace

    if parent is None:
        parent = _CONTEXT.get()
    opened = tracer.start_span(name, context=parent, attributes=attributes)
    token = _CONTEXT.set(trace.set_span_in_context(opened, parent))
    handle = _LiveSpan(opened)
    try:
        yield handle
    except BaseException as error:
        if isinstance(error, GeneratorExit):
            handle.set("fabric.status", "cancelled")
        else:
            code = getattr(error, "code", None)
            handle.fail(code if isinstance(code, str) else type(error).__name__)
        raise
    finally:
        opened.end()
        # Set in another task's context when the block ends elsewhere (see the module
        # docstring): the variable then ends with its task.
        with contextlib.suppress(ValueError):
            _CONTEXT.reset(token)


def inject() -> dict[str, str]:
    """The W3C trace context of the current span (`traceparent`), to send with a message;
    empty when tracing is off or no span is open."""
    context = _CONTEXT.get()
    if _tracer is None or context is None:
        return {}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> Context | None:
    """The remote parent a message or call carried (`traceparent`), or None."""
    if _tracer is None or not carrier or "traceparent" not in carrier:
        return None
    context: Context = _propagator.extract(dict(carrier))
    return context
