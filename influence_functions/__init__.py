"""Influence functions (Koh & Liang, ICML 2017): the second driver's method."""
