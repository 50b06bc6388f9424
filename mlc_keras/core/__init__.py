"""The settings, the label schema and the errors every layer shares."""
