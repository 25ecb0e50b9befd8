"""Unit tests of vivit.model, one file per module."""
