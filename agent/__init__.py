"""The trusted agent: holds the session token, owns the content cache, serves the interposer."""
