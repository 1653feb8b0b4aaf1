"""Deployment stage: merge and export, interactive chat, an OpenAI-compatible server for several adapters."""
