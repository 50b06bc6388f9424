"""The run folder: what it holds, its lock, and the checks made before anything is written to it."""
