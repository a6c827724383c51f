"""Worked examples that ship with stillhouse (the `make demo` task lives here)."""
