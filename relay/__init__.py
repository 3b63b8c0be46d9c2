"""octorelay: an e-mail <-> SMS bridge for Octopush two-way SMS."""

__version__ = "0.1.0"
