"""An in-process emulator of the Unblu server, for tests and for work without a licence.

It serves the part of Unblu's web API that extmsg uses, in both generations
(``/app/rest/v4`` for Unblu 8, ``/app/rest/v3`` for Unblu 6/7), with basic auth and Unblu's
``Error`` bodies, and calls each channel's ``webhookEndpoint`` like Unblu does: signed outbound
requests (V4 channels) or webhook events (V3 channels), queued per channel and retried. Webhook
registrations (``/webhookregistrations/*``) get ``conversation.ended`` when a conversation
ends, signed with the registration's secret and serialized for its ``apiVersion``. An agent API
under ``/sandbox/api`` plays the agent's side (see :mod:`extmsg.sandbox.agent_api`).

Entry points: :func:`create_sandbox_app` (an ``aiohttp`` application whose :class:`Sandbox` is
``app[SANDBOX_KEY]``) and :func:`run_sandbox` (serve it on a port). :class:`WebhookRecorder` is a
stand-in channel endpoint for tests.
"""

from __future__ import annotations

from .app import SandboxServer, create_sandbox_app, run_sandbox
from .delivery import Attempt, Delivery
from .errors import ApiError
from .recorder import RecordedCall, WebhookRecorder
from .service import DEFAULT_AGENT_ID, SANDBOX_KEY, Sandbox

__all__ = [
    "DEFAULT_AGENT_ID",
    "SANDBOX_KEY",
    "ApiError",
    "Attempt",
    "Delivery",
    "RecordedCall",
    "Sandbox",
    "SandboxServer",
    "WebhookRecorder",
    "create_sandbox_app",
    "run_sandbox",
]
