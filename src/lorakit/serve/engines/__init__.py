"""Engines that run an exported model outside transformers (llama.cpp through llama-cpp-python)."""
