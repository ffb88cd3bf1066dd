"""The synthfs wire protocol: message classes and their codec (shared home)."""

from synthfs.protocol.codec import DecodeError, Envelope, decode, encode, error_from_exception
from synthfs.protocol.messages import *  # noqa: F403
from synthfs.protocol.messages import __all__ as _messages_all

__all__ = ["DecodeError", "Envelope", "decode", "encode", "error_from_exception", *_messages_all]
