"""X-Ray tracing that costs nothing until a trace is recorded (cold start, issue 15).

Powertools' ``Tracer()`` imports the X-Ray SDK (with wrapt and asyncio, ~40 ms) in its
constructor, even when tracing is disabled, and patching botocore at init imports
botocore into functions that never call AWS. :class:`SampledTracer` builds the real
``Tracer`` only when it is needed:

- on the first invocation that Lambda samples (``Sampled=1`` in ``_X_AMZN_TRACE_ID``):
  from then on every invocation goes through ``Tracer.capture_lambda_handler`` as before,
  and botocore is patched then (the patch wraps the client class, so clients created
  earlier are traced too);
- when code asks to :meth:`~SampledTracer.patch` a library whose clients are built at
  once (httpx, requests): the patch has to come before the client, so the tracer is
  built there (only the chat and payment functions, on their first request).

An unsampled invocation would only have created X-Ray's no-op facade segments, so
skipping the tracer for it loses nothing that X-Ray would have recorded. Where tracing
is off (outside Lambda, SAM local, ``POWERTOOLS_TRACE_DISABLED``) the SDK is never
imported.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

Handler = TypeVar("Handler", bound=Callable[..., Any])

#: Set by the Lambda runtime for each invocation: ``Root=...;Parent=...;Sampled=1``.
TRACE_ID_ENV = "_X_AMZN_TRACE_ID"


def sampled() -> bool:
    """Whether Lambda records a trace of the current invocation."""
    return "Sampled=1" in os.environ.get(TRACE_ID_ENV, "").split(";")


def tracing_enabled() -> bool:
    """Powertools' own rule: in Lambda, not SAM local, not POWERTOOLS_TRACE_DISABLED."""
    from aws_lambda_powertools.tracing.tracer import Tracer

    return not Tracer._is_tracer_disabled()


class SampledTracer:
    """The Powertools ``Tracer`` of :mod:`llmcredits.http.api`, built on first need."""

    def __init__(self, service: str, patch_modules: Sequence[str]) -> None:
        self.service = service
        self.patch_modules = tuple(patch_modules)
        self._tracer: Tracer | None = None
        self._untraced_invocations = 0

    @property
    def built(self) -> bool:
        return self._tracer is not None

    def tracer(self) -> Tracer:
        """The real Tracer (imports the X-Ray SDK and patches ``patch_modules``)."""
        if self._tracer is None:
            from aws_lambda_powertools import Tracer
            from aws_lambda_powertools.tracing import tracer as tracer_module

            if self._untraced_invocations:
                # The ColdStart annotation belongs to the container's first invocation,
                # which ran untraced: this one is warm.
                tracer_module.is_cold_start = False
            self._tracer = Tracer(service=self.service, patch_modules=self.patch_modules)
        return self._tracer

    def patch(self, modules: Sequence[str]) -> None:
        """Patch ``modules`` now (before their clients are created), if tracing is on."""
        if tracing_enabled():
            self.tracer().patch(modules)

    def capture_lambda_handler(self, handler: Handler) -> Handler:
        """``Tracer.capture_lambda_handler`` for the invocations X-Ray records."""
        traced: Callable[..., Any] | None = None

        @functools.wraps(handler)
        def invoke(event: Any, context: Any) -> Any:
            nonlocal traced
            if traced is None and (self.built or (sampled() and tracing_enabled())):
                traced = self.tracer().capture_lambda_handler(handler)
            if traced is None:
                self._untraced_invocations += 1
                return handler(event, context)
            return traced(event, context)

        return invoke  # type: ignore[return-value]
