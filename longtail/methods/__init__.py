"""One module per paper. Importing this package registers every method's losses and models."""
