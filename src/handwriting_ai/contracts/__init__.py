"""Typed messages and the one converter that (un)structures them."""
