"""Facts from the SDD paper and the authors' code base, kept as package data (read them via `sddlib.report`).

- `paper_results.csv`: every accuracy of the paper's three result tables (+ CIFAR-100 teacher/student-alone).
- `experiments.yaml`: the authors' effective hyper-parameters for each published SDD config.
- `imagenet_baselines.yaml`: the authors' plain KD/DKD/NKD ImageNet configs, the source of the paper's
  ImageNet baseline rows (their ImageNet SD models cannot run M=[1]).
- `authors_logged_runs.csv`: top-1 accuracies the authors noted beside their own run commands.
"""
