"""Thin asyncio adapters around the sans-IO core: the server and the client."""
