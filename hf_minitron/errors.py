"""The one exception type the library raises for problems a user can fix."""


class MinitronError(ValueError):
    """Bad input, detected before any work or any file is written.

    Messages follow one shape: what is wrong, why it matters, and how to fix it.
    The CLI prints these without a traceback.
    """

    def __init__(self, what: str, why: str = "", fix: str = ""):
        parts = [what.rstrip(".") + "."]
        if why:
            parts.append(why.rstrip(".") + ".")
        if fix:
            parts.append("Fix: " + fix.rstrip(".") + ".")
        super().__init__(" ".join(parts))
