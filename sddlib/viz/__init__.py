"""Figures that show *why* scale-decoupled distillation works: per-region teacher predictions that are right exactly
when the global one is right (consistent) or right where it is wrong and wrong where it is right (complementary).

    predictions  collect a run's region predictions once (teacher and students) -> RegionPredictions
    frames       one tidy DataFrame per figure, from the predictions (or the training history)
    figures      each figure drawn from its frame (seaborn where it fits); plot_* = frame + draw + save
    features     the family's two figures: t-SNE of penultimate features, teacher-student correlation difference
    samples      a dataset before training: class counts, a grid of labelled images
    run_figures  every figure of a run as PNG + CSV (save_run_figures), shown with captions
    region_file  the run's region predictions saved beside its figures (top-k per region), for the explorer
    explorer     explore(run_dir): an ipywidgets app over those predictions (a static snapshot when headless)
    curves       learning curves of a notebook's runs (test top-1 per epoch, best and last marked)
    findings     what a notebook's runs show, in sentences computed from them, and what to do next
    style        the fixed Okabe-Ito category colours, sizes, saving

    preds = collect_region_predictions(teacher, student, dls, (1, 2, 4), max_items=512)
    region_map_frame(preds)             # the data of figure 1, one row per (image, region)
    plot_region_map(preds, path="fig1_region_map.png")   # writes fig1_region_map.png and .csv
    draw_category_shares(pd.read_csv("fig3a_category_shares.csv"))   # re-plot from a saved frame
    save_run_figures(teacher, student, dls, scales, cb, out_dir)    # all of them, on a class-stratified sample
    save_learner_figures(learn, out_dir)                            # the same for sddlib.distill_learner's Learner

Category ids and names follow `CATEGORIES` (the `RegionMasks` order).
"""
from .curves import draw_learning_curves, learning_curve_frame, plot_learning_curves
from .explorer import Explorer, explore
from .features import (FeaturePredictions, collect_features, correlation_frame, draw_correlation, draw_tsne,
                       plot_correlation, plot_tsne, tsne_frame)
from .figures import (draw_agreement, draw_category_history, draw_category_shares, draw_per_class,
                      draw_region_logits, draw_region_map, plot_agreement, plot_category_history,
                      plot_category_shares, plot_per_class, plot_region_logits, plot_region_map)
from .findings import next_steps, paired_bootstrap, run_findings
from .frames import (agreement_frame, category_history_frame, category_shares_frame, per_class_frame,
                     region_logits_frame, region_map_frame)
from .predictions import RegionPredictions, collect_region_predictions, collect_run_predictions, region_labels
from .region_file import REGION_FILE, RegionFile, load_region_file, region_predictions, save_region_file
from .run_figures import (FIGURE_CAPTIONS, FIGURE_FILES, SAMPLE_FILE, sample_sentence, save_learner_figures,
                          save_run_figures, show_run_figure, show_run_figures)
from .samples import class_counts, plot_samples
from .style import CATEGORIES, CATEGORY_COLORS, CATEGORY_LABELS, DPI, csv_path

__all__ = ["CATEGORIES", "CATEGORY_COLORS", "CATEGORY_LABELS", "DPI", "Explorer", "FIGURE_CAPTIONS", "FIGURE_FILES",
           "FeaturePredictions", "REGION_FILE", "RegionFile", "RegionPredictions", "SAMPLE_FILE", "agreement_frame",
           "category_history_frame", "category_shares_frame", "class_counts", "collect_features",
           "draw_learning_curves", "learning_curve_frame", "next_steps", "paired_bootstrap", "plot_learning_curves", "run_findings",
           "collect_region_predictions", "collect_run_predictions", "correlation_frame", "csv_path", "draw_agreement",
           "draw_category_history", "draw_category_shares", "draw_correlation", "draw_per_class",
           "draw_region_logits", "draw_region_map", "draw_tsne", "explore", "load_region_file", "per_class_frame",
           "plot_agreement", "plot_category_history", "plot_category_shares", "plot_correlation", "plot_per_class",
           "plot_region_logits", "plot_region_map", "plot_samples", "plot_tsne", "region_labels",
           "region_logits_frame", "region_map_frame", "region_predictions", "sample_sentence", "save_learner_figures",
           "save_region_file", "save_run_figures", "show_run_figure", "show_run_figures", "tsne_frame"]
