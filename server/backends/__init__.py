"""Repository backends behind the server (local directory; object stores later)."""
