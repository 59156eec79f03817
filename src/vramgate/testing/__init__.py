"""Helpers for testing a vramgate setup: a fake OpenAI-compatible engine (`fake_engine`)."""
