"""Errors that end a command with one clear line instead of a stack trace."""


class ShelfcastError(Exception):
    """Base class: the message is shown to the operator as it is."""


class InfraUnavailable(ShelfcastError):
    """A server we depend on (Kafka, Redis) cannot be reached; the message says which and where."""


class ContractError(ShelfcastError):
    """A record does not match its contract; the message names the field and the reason."""
