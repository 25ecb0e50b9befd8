"""Unit tests of vivit.weights, one file per module."""
