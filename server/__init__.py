"""The data server: verifies tokens and serves a repository through a Backend."""
