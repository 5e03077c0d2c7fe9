"""Workflows: the steps of the layers below run in order for an observer's routine (the
nightly loop; the watch mode to come)."""
