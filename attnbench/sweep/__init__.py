"""``python -m attnbench run|train|stats -m ...``: a command as a hydra multirun, one job per point.

    python -m attnbench stats -m --random variants=full,sliding_window seed=0,1 hydra/launcher=joblib
    python -m attnbench run -m variants=full,sliding_window seq_lens=1024,2048 \\
        +params.sliding_window.window=64,256 hydra/launcher=joblib hydra.launcher.n_jobs=2
    python -m attnbench stats -m --out results/sweeps/s --resume      # rerun the jobs that failed

The words of a sweep (:mod:`attnbench.sweep.argv`): ``--flag value`` is a fixed setting of every
job; ``key=a,b`` with ``key`` one of the command's flags (underscores: ``variants``, ``seq_lens``,
``seed``, ``seeds``, ``task``, ``threads`` ...) sweeps that flag; ``hydra/...`` and ``hydra.*``
go to hydra unchanged; any other ``key=a,b`` sweeps an override the command gets (a bench.yaml
key for run, a task-config key for train and stats). Hydra's grammar throughout: ``a,b`` is a
sweep, ``[a,b]`` one list value (``variants=[full,performer]``: one job with both), quotes keep
commas and brackets (``variants='sliding_window[window=64,256]'``), ``range(0,3)`` works.

Every job runs the command in-process into its own directory ``<sweep dir>/<job number>/``
(``--out`` of the command; ``job.json`` says what ran and how it ended; ``job.log`` holds its
output). The sweep directory is ``--out DIR``, by default ``results/sweeps/<command>-<UTC
time>``; ``python -m attnbench report DIR`` merges every job's rows and lists the jobs that
failed. A failing job does not stop the others: it leaves a ``row_kind = "sweep_job"`` row
(:mod:`attnbench.sweep.schema`) and the sweep exits 1 after printing its table of jobs.
``--resume`` reruns only the jobs whose ``job.json`` is missing or not ok (a partial ``run`` or
``train`` continues with the command's own ``--resume``). Timing jobs on one machine never share
cores (:mod:`attnbench.sweep.cores`).

On a SLURM cluster (hydra-submitit-launcher; the sweep directory must be on a file system
every node sees)::

    python -m attnbench train -m --task listops variants=full,performer seeds=0,1,2 \\
        train.lr=1e-3,3e-4 hydra/launcher=submitit_slurm hydra.launcher.partition=gpu \\
        hydra.launcher.gpus_per_node=1 hydra.launcher.cpus_per_task=8 hydra.launcher.mem_gb=32 \\
        hydra.launcher.timeout_min=240 hydra.launcher.array_parallelism=16

``partition``: the queue; ``gpus_per_node`` and ``cpus_per_task``: what each job gets (a job
takes ``--threads`` from the cores SLURM gave it unless the sweep sets ``--threads``);
``mem_gb``: memory per job; ``timeout_min``: SLURM kills a job after it (the sweep marks it a
crash; ``--resume`` continues it); ``array_parallelism``: how many jobs run at once. On one
machine, ``hydra/launcher=submitit_local hydra.launcher.timeout_min=60`` runs the same code path
(every job at once, each a process of its own; its jobs see no GPU unless
``hydra.launcher.gpus_per_node=N``, and then all see the same first N) and ``hydra/launcher=joblib
hydra.launcher.n_jobs=N`` runs N jobs at a time (joblib's default, -1: one per core).
"""
