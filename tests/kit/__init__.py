"""Tests of the shared service kit (forgeline_kit)."""
