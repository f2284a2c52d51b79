"""Editing over time: one policy carried through a stream of changing tasks, with continual-learning metrics.

``metrics`` holds the score-matrix metrics (ACC, BWT, FWT, forgetting,
plasticity) apart from any runner, so they can be checked against values
worked out by hand.
"""
