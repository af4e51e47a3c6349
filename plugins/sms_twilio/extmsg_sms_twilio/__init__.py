"""SMS through Twilio Programmable Messaging, as an extmsg messenger."""
