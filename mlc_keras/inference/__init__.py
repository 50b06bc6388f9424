"""Every artefact as one callable, and predictions for image files."""
