"""Helpers for testing code built on posterm (and posterm itself): the pytest plugin
(pytest_plugin.py) and a fake clock (clock.py). A family's own test
helpers live with the family (the native link pair and hostile ECR: posterm.families.native.linkpair, .fuzz)."""
