"""A synthetic fly64-style study and a reference comparison, for the demo and the tests."""
