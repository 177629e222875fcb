"""Federated learning: one Algorithm interface, device profiles, the in-process harness and one
module per algorithm. Transport-agnostic: everything an algorithm sends is a :class:`Message`.
"""
