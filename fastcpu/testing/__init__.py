"""Test and benchmark helpers that ship with the package (they need PyTorch, a test dependency:
nothing that training, synthesis or evaluation runs imports this package)."""
