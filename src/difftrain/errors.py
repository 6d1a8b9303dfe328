"""`ConfigError`: a configuration, argument or input that cannot start, its fix in the message.

Imports nothing: every layer raises it, and the CLIs print it without a traceback.
"""


class ConfigError(ValueError):
    """A configuration that cannot start; the message lists every problem found."""
