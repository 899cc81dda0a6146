"""Regression distillation: float targets, a teacher's predictions (and its uncertainty) as the soft targets.

- :mod:`kdistill.regression.config`: the ``task: regression`` config.
- :mod:`kdistill.regression.data`: the 1-D toy, scikit-learn's ``diabetes``, a user's ``.npz``; checked targets.
- :mod:`kdistill.regression.teacher`: ensembles (MLPs, gradient boosting) or the user's module.
- :mod:`kdistill.regression.objective`: the objective :func:`kdistill.trainer.fit` trains.
- The pure losses live in :mod:`kdistill.losses.regression`.
"""
