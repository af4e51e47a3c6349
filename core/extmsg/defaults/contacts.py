"""Default contact handling: contacts are used as the messenger plugin parsed them."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..models import Channel, Contact, ContactCheck


@hookimpl(trylast=True)
def extmsg_map_contact(channel: Channel, contact: Contact) -> Contact:
    """Identity mapping."""
    return contact


@hookimpl(trylast=True)
def extmsg_validate_contact(channel: Channel, identifier: str) -> ContactCheck:
    """Accept any non-empty identifier, trimmed."""
    value = identifier.strip()
    if not value:
        return ContactCheck(valid=False, error="the contact identifier is empty")
    return ContactCheck(valid=True, address=value)
