"""The one exception type the package raises for bad input.

It subclasses ValueError so callers that already catch ValueError keep working; the CLI catches exactly this
class (not every ValueError), so a genuine bug still shows its traceback.
"""


class InfalignError(ValueError):
    """Bad input or configuration; the message names the bad value and what is allowed."""
