"""Allow ``python -m mail2sms``."""

from mail2sms.cli import main

raise SystemExit(main())
