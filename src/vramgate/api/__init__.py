"""HTTP routes: the OpenAI-compatible /v1 relay, and the gateway's own status and admin routes."""
