"""Input pipeline pieces; submodules import TensorFlow, this package itself does not."""
