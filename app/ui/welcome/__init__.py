"""The first-run welcome page."""
