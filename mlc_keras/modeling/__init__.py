"""The Keras side: the model, its custom layers, saving, losses and metrics."""
