"""mail2sms: an Email-to-SMS bridge daemon."""

__version__ = "0.1.0"
