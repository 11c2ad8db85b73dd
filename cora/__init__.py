"""cora: CORA open-vocabulary detection toolkit."""

__version__ = "0.1.0"
