"""Email (SMTP out; SMTP or IMAP in), as an extmsg messenger."""
