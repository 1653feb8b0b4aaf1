"""Data stage: the canonical Conversation record, format readers/writers, quality checks, building and splitting."""
