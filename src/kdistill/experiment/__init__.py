"""The experiment layer: what ``kdistill run`` and ``kdistill sweep`` do, on top of the library.

:func:`~kdistill.experiment.run.run_experiment` opens a run (:mod:`.context`), checks it (:mod:`.checks`),
prepares the teacher (:mod:`.teachers`), runs each role for each seed (:mod:`.roles`, each training its
models with :func:`~kdistill.experiment.train.train_model`) and writes the summary and report.
"""
