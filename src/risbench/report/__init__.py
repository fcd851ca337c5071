"""``python -m risbench.report PATH...``: every ablation table beside the paper's, as Markdown, CSV, plots,
one HTML page and W&B tables.

* `runs`: the jobs under the given folders (each folder with a ``results.json`` and ``.hydra/``);
* `paper`: the papers' numbers (``experiments/<paper>/paper_results.yaml``; its schema is in `paper`'s docstring);
* `compare`: each job matched to its table (``experiment``) and row (the row's ``overrides``), cells per row;
* `leaderboard`: the synthref leaderboard (``experiment=synthref_leaderboard``);
* `plots`, `render`, `wandb_export`: the files and the W&B tables; `build`: all of it;
* `hydra_callback`: the report of a sweep written when it ends; `summary`: a training run's last line;
* `overlays`: images of predictions (mask tinted on the image, expression as caption) for training
  callbacks, ``mode=eval eval.overlays=K`` and ``mode=predict``.
"""
