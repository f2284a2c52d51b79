"""The shipped configurations: experiments, evaluations and PPO's RL Zoo hyper-parameters.

Installed as ``llmrl.configs``, so that a wheel carries them.
"""
