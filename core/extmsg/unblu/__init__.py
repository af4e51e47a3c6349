"""Everything extmsg says to Unblu and decodes from Unblu.

* :class:`UnbluClient` - the web API client (v4 for Unblu 8, v3 for Unblu 6/7).
* :func:`decode_call` and the ``*_response`` encoders - what Unblu POSTs to a channel endpoint.
* :mod:`extmsg.unblu.signing` - HMAC signatures on those calls and our answers.
* :mod:`extmsg.unblu.wire` - the JSON bodies as msgspec Structs.
"""

from __future__ import annotations

from extmsg.unblu.calls import (
    AgentMessage,
    ChannelCall,
    ConversationEnded,
    CreateContact,
    CreateConversation,
    MalformedCall,
    MessageState,
    NewMessage,
    Ping,
    ReceivingContact,
    RequestedPerson,
    RequestedRecipient,
    contact_create_response,
    contact_error_response,
    contact_invalid_identifier_response,
    contact_person_mismatch_response,
    contact_use_existing_response,
    conversation_create_response,
    conversation_error_response,
    conversation_use_existing_response,
    decode_call,
    message_state_response,
    new_message_response,
    ping_response,
)
from extmsg.unblu.client import (
    ApiVersion,
    ChannelSpec,
    ContactRef,
    LookupAccess,
    Recipient,
    RecordedCall,
    UnbluClient,
    WebhookSpec,
    virtual_person_source_id,
)
from extmsg.unblu.errors import UnbluError, UnbluNotFound
from extmsg.unblu.wire import Channel, Contact, Conversation

__all__ = [
    "AgentMessage",
    "ApiVersion",
    "Channel",
    "ChannelCall",
    "ChannelSpec",
    "Contact",
    "ContactRef",
    "Conversation",
    "ConversationEnded",
    "CreateContact",
    "CreateConversation",
    "LookupAccess",
    "MalformedCall",
    "MessageState",
    "NewMessage",
    "Ping",
    "ReceivingContact",
    "Recipient",
    "RecordedCall",
    "RequestedPerson",
    "RequestedRecipient",
    "UnbluClient",
    "UnbluError",
    "UnbluNotFound",
    "WebhookSpec",
    "contact_create_response",
    "contact_error_response",
    "contact_invalid_identifier_response",
    "contact_person_mismatch_response",
    "contact_use_existing_response",
    "conversation_create_response",
    "conversation_error_response",
    "conversation_use_existing_response",
    "decode_call",
    "message_state_response",
    "new_message_response",
    "ping_response",
    "virtual_person_source_id",
]
