"""Facts from the SDD paper and the authors' code base, kept as package data (read them via `sddlib.report`).

- `paper_results.csv`: every accuracy of the paper's three result tables (+ CIFAR-100 teacher/student-alone).
- `experiments.yaml`: the authors' effective hyper-parameters for each published SDD config.
- `imagenet_baselines.yaml`: the authors' plain KD/DKD/NKD ImageNet configs, the source of the paper's
  ImageNet baseline rows (their ImageNet SD models cannot run M=[1]).
- `authors_logged_runs.csv`: top-1 accuracies the authors noted beside their own run commands.
- `ls_paper_results.csv`: CIFAR-100 top-1 of KD, KD+LS, DKD and DKD+LS as reported by the logit-standardization
  paper (Sun et al., CVPR 2024) in the tables of its code release's README (not SDD numbers; method `kd+ls` is
  plain KD with logit standardization).
"""
