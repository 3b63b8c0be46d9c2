"""A corpus of reply e-mails as real clients format them, generated from tables (see `corpus.py`)."""
