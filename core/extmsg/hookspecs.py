"""The plugin contract: every hook extmsg calls, grouped by when it is called.

A plugin is a module or object with functions named like the specs below, decorated with
``@extmsg.hookimpl``. It is found through the entry-point group ``extmsg.plugins``. The core's
own behaviour (identity contact mapping, default routing, sender-prefix rendering, error
classification) is registered the same way, so a plugin overrides it with
``@hookimpl(tryfirst=True)``.

**Async results.** Any implementation may return a plain value or an awaitable; the core
resolves every result with one ``await_me_maybe``. For hooks marked *first result*, pluggy stops
at the first implementation that returns something other than ``None``, so an implementation
declines by returning ``None`` *synchronously*: write it as a plain ``def`` that returns
``None`` for channels that are not its own and otherwise returns a value or a coroutine (for
example ``return self._send(channel, message)``). ``async def`` implementations of first-result
hooks are rejected when the plugin is loaded, since a coroutine is never ``None``.

**Messenger hooks** receive the channel (or the messenger name) and must return ``None`` for
messengers that are not theirs. A :class:`extmsg.messenger.Messenger` unit is adapted into
these hooks by the core, which checks the ownership once for all its methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from .config import Config
    from .models import (
        Attachment,
        Channel,
        Contact,
        ContactCheck,
        ErrorVerdict,
        HttpReply,
        InboundEvent,
        InboundMessage,
        InboundRequest,
        MessengerType,
        OutboundMessage,
        ProviderFake,
        RouteUrls,
        Routing,
        SendResult,
    )

PROJECT = "extmsg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration -----------------------------------------------------------------------------
@hookspec
def extmsg_messenger_types() -> Sequence[MessengerType] | MessengerType | None:
    """Declare the messenger types this plugin provides.

    Called once when the plugin manager is built, before the config is validated (the
    settings schemas validate each channel's ``settings``).

    :return: one :class:`~extmsg.models.MessengerType` or a list of them. All results are
        collected; two plugins declaring the same name is an error.
    """


@hookspec
def extmsg_provider_fakes() -> Sequence[ProviderFake] | None:
    """Declare fakes of provider APIs this plugin ships for tests and the sandbox.

    Called by ``extmsg sandbox`` and the test fixtures. All results are collected.

    :return: a list of :class:`~extmsg.models.ProviderFake`.
    """


# --- lifecycle --------------------------------------------------------------------------------
@hookspec
def extmsg_startup(app: web.Application, config: Config) -> Awaitable[None] | None:
    """Called once when ``extmsg serve`` starts, after the store is open and before requests
    are taken. Open sessions, start background tasks.

    :param app: the aiohttp application (store long-lived objects under an ``web.AppKey``).
    :param config: the validated configuration.
    :return: nothing; may be a coroutine. All implementations run; an exception stops start-up.
    """


@hookspec
def extmsg_listening(
    app: web.Application, config: Config, urls: RouteUrls
) -> Awaitable[None] | None:
    """Called once the server listens and every plugin started, with the public URLs of the
    provider routes. Register webhooks with a provider here (Telegram's ``setWebhook``).

    Called by ``extmsg serve`` (and :func:`extmsg.testing.helpers.running_extmsg`) right after
    the listener is bound, so a provider that calls the URL back at once reaches it.

    :param app: the aiohttp application.
    :param config: the validated configuration.
    :param urls: the :class:`~extmsg.models.RouteUrls` of every configured channel and
        messenger route.
    :return: nothing; may be a coroutine. All implementations run; an exception is logged with
        the plugin's name and the server keeps serving (the provider can still be set up by
        hand).
    """


@hookspec
def extmsg_shutdown(app: web.Application, config: Config) -> Awaitable[None] | None:
    """Called once when ``extmsg serve`` stops, after requests stopped and in-flight jobs ended.
    Close what :func:`extmsg_startup` opened.

    :return: nothing; may be a coroutine. All implementations run even if one fails.
    """


# --- inbound: messenger → Unblu ---------------------------------------------------------------
@hookspec(firstresult=True)
def extmsg_verify_inbound(
    messenger: str, request: InboundRequest, channels: Sequence[Channel]
) -> bool | Awaitable[bool] | None:
    """Check the provider's signature on an inbound request before anything is parsed.

    Called for every request to an ``events`` route whose channels have signature checks on.

    :param messenger: the messenger type of the route.
    :param request: the raw request; ``request.url`` is the public URL the provider signed.
    :param channels: for a channel route, the one channel; for a messenger route, every
        channel of the messenger (the implementation finds the one whose secret matches).
    :return: ``True`` when the signature is valid. Raise :class:`~extmsg.errors.SignatureError`
        when it is missing or wrong (the core answers 403). ``None``: not my messenger.
        First result. A request nobody verifies is refused.
    """


@hookspec(firstresult=True)
def extmsg_parse_inbound(
    messenger: str, request: InboundRequest, channels: Sequence[Channel]
) -> Sequence[InboundEvent] | Awaitable[Sequence[InboundEvent]] | None:
    """Turn a verified provider request into normalized events.

    Called after :func:`extmsg_verify_inbound` succeeded. The events are written durably, all
    in one transaction, before the provider is acknowledged.

    :param messenger: the messenger type of the route.
    :param request: the raw request.
    :param channels: as for :func:`extmsg_verify_inbound`.
    :return: a list of :class:`~extmsg.models.InboundMessage`,
        :class:`~extmsg.models.StatusUpdate` and :class:`~extmsg.models.ContactUpdate`
        (possibly empty). Events from a messenger route must name their ``channel``. Raise
        :class:`~extmsg.errors.BadInbound` for a malformed request (400). ``None``: not my
        messenger. First result.
    """


@hookspec(firstresult=True)
def extmsg_render_ack(
    messenger: str, request: InboundRequest, events: Sequence[InboundEvent]
) -> HttpReply | Awaitable[HttpReply] | None:
    """Build the answer to the provider once its events are stored.

    :param messenger: the messenger type of the route.
    :param request: the request being answered.
    :param events: what was parsed from it (duplicates included).
    :return: the :class:`~extmsg.models.HttpReply` (TwiML for Twilio, an empty 200 for Meta).
        First result; the core's default answers ``200`` with an empty body.
    """


@hookspec(firstresult=True)
def extmsg_map_contact(channel: Channel, contact: Contact) -> Contact | Awaitable[Contact] | None:
    """Enrich or rewrite a contact before it is looked up or created in Unblu.

    Called by the delivery engine for every inbound message, before the conversation is found.
    Use it to attach a CRM name or to merge identities.

    :param channel: the channel the message came through.
    :param contact: the contact as the messenger plugin parsed it.
    :return: the contact to use. First result; the core's default returns it unchanged.
    """


@hookspec(firstresult=True)
def extmsg_route_conversation(
    channel: Channel, contact: Contact, message: InboundMessage
) -> Routing | Awaitable[Routing] | None:
    """Decide how a new Unblu conversation is opened (queue, agent or team, engagement type).

    Called only when a contact's message needs a new conversation.

    :param channel: the channel of the message.
    :param contact: the mapped contact.
    :param message: the first message of the new conversation.
    :return: a :class:`~extmsg.models.Routing`. First result; the core's default uses the
        channel's ``engagement_type`` and ``recipient`` (none: the conversation is queued).
    """


@hookspec(firstresult=True)
def extmsg_fetch_attachment(
    channel: Channel, attachment: Attachment
) -> Attachment | Awaitable[Attachment] | None:
    """Download an inbound attachment that only carries a URL.

    Called by the delivery engine before a FILE message is sent to Unblu.

    :param channel: the channel the message came through (credentials are in its settings).
    :param attachment: an attachment with ``url`` set and ``data`` empty.
    :return: the attachment with ``data`` filled in. Raise a
        :class:`~extmsg.errors.DeliveryError` when it cannot be fetched: a retryable one fails
        the job (it is retried); a permanent one, except ``status=401``, turns the file into a
        note in its place naming the file and the error's message. First result;
        ``None`` for channels that are not the plugin's.
    """


@hookspec(firstresult=True)
def extmsg_validate_contact(
    channel: Channel, identifier: str
) -> ContactCheck | Awaitable[ContactCheck] | None:
    """Validate and normalize a contact identifier an agent typed (outbound conversations).

    Called for Unblu's ``create_contact`` request.

    :param channel: the channel the agent chose.
    :param identifier: what the agent typed (a phone number, an address).
    :return: a :class:`~extmsg.models.ContactCheck`. First result; the core's default accepts
        any non-empty identifier unchanged.
    """


# --- outbound: Unblu → messenger --------------------------------------------------------------
@hookspec(firstresult=True)
def extmsg_render_outbound(
    channel: Channel, message: OutboundMessage
) -> Sequence[OutboundMessage] | Awaitable[Sequence[OutboundMessage]] | None:
    """Turn an agent's message into what the contact will receive.

    Called by the delivery engine before :func:`extmsg_send`. Prefix the sender's name, split
    long texts, pick a template outside a messaging window.

    :param channel: the channel of the conversation.
    :param message: the agent's message; ``sender_name`` is the agent's display name or None.
    :return: the messages to send, in order (usually one). First result; the core's default
        prefixes ``channel.sender_prefix`` (``{sender}`` → the name, or
        ``channel.sender_fallback`` when the agent has none). Use
        :func:`extmsg.rendering.prefix_text` to keep that behaviour in your own renderer.
    """


@hookspec(firstresult=True)
def extmsg_send(
    channel: Channel, message: OutboundMessage
) -> SendResult | Awaitable[SendResult] | None:
    """Send one rendered message to the contact through the provider.

    Called by the delivery engine, in order per conversation, as many times as retries need.

    :param channel: the channel to send through.
    :param message: one rendered message; ``message.id`` is stable across retries (use it as
        an idempotency key where the provider has one).
    :return: a :class:`~extmsg.models.SendResult` with the provider's message id. Raise a
        :class:`~extmsg.errors.DeliveryError` (``RetryableError`` / ``PermanentError``) or let
        transport errors through (see :func:`extmsg_classify_error`). First result; ``None``
        for channels that are not the plugin's.
    """


@hookspec(firstresult=True)
def extmsg_find_sent(
    channel: Channel, message: OutboundMessage
) -> SendResult | bool | Awaitable[SendResult | bool] | None:
    """Ask the provider whether it already has a message, before it is sent again.

    Called by the delivery engine only for a job *in doubt* (an earlier attempt may have
    reached the provider: its worker died or lost its lease between the send and extmsg
    recording it), once per attempt, for the first part of the message not yet recorded as
    sent, right before :func:`extmsg_send` would send it. Jobs not in doubt never call it.

    :param channel: the channel the message goes through.
    :param message: the rendered part, as :func:`extmsg_render_outbound` made it (a file
        for a messenger that sends files by URL is not published yet): ``message.id`` is our
        stable id, ``message.part`` the part's index and
        ``message.accepted_at`` when extmsg accepted the agent's message (no attempt is older;
        search no further back, and answer ``None`` when it is missing).
    :return: a :class:`~extmsg.models.SendResult` with the provider's id when the provider has
        this part: it is recorded as sent and not sent again. ``False`` when the provider shows
        that it never got it: it is sent. ``None`` when the provider cannot tell (no lookup,
        or an ambiguous one) or the channel is not the plugin's: it is sent and counted as a
        possible double. A lookup that raises is classified like a send
        (:func:`extmsg_classify_error`): a retryable error retries the job later, still in
        doubt, without sending; a permanent one sends and counts the possible double. First
        result: pluggy stops at the first implementation that answers something other than
        ``None``, so decline with a synchronous ``None``.
    """


@hookspec(firstresult=True)
def extmsg_mark_read(channel: Channel, provider_message_id: str) -> bool | Awaitable[bool] | None:
    """Tell the provider that an agent read a contact's message (blue ticks).

    Called when Unblu reports a visitor message as READ.

    :param channel: the channel of the message.
    :param provider_message_id: the provider's id of the contact's message.
    :return: ``True`` when done, ``False`` when the messenger has no read receipts. First
        result; ``None`` for channels that are not the plugin's.
    """


@hookspec(firstresult=True)
def extmsg_classify_error(
    channel: Channel | None, error: BaseException
) -> ErrorVerdict | Awaitable[ErrorVerdict] | None:
    """Decide whether a failed remote call is worth retrying.

    Called by the delivery engine for every exception a job raises.

    :param channel: the channel of the job, or None for Unblu calls not tied to one.
    :param error: the exception.
    :return: an :class:`~extmsg.models.ErrorVerdict` (retryable or permanent, a reason a person
        can act on, an optional ``retry_after``). First result; the core's default knows
        :class:`~extmsg.errors.DeliveryError`, aiohttp's client errors and timeouts, and treats
        anything else as retryable.
    """
