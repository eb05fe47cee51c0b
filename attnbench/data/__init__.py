"""Generators and loaders for the tasks: every one returns :class:`attnbench.data.base.TaskData`
(token tensors in three splits, named for what they are); nothing is downloaded at run time.

One module per task, each with ``build(..., root=None)`` (generate, or read release files at
``root``) and, where a release format exists, ``write(out_dir, ...)`` (the format the loader
reads back): listops, mqar, text, retrieval, lm, image, pathfinder.
"""
