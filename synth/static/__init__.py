"""The audit page's static files (served by synth.viewer)."""
