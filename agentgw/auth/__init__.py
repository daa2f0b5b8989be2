"""Who is calling: JWT verification and the ASGI middleware that applies it."""
