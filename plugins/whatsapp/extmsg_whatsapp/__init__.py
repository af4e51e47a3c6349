"""WhatsApp Business Cloud API, as an extmsg messenger."""
