"""Figures that show *why* scale-decoupled distillation works: per-region teacher predictions that
agree with the global one (consistent) or disagree in an informative way (complementary).

    predictions  collect a run's region predictions once (teacher and students) -> RegionPredictions
    frames       one tidy DataFrame per figure, from the predictions (or the training history)
    figures      each figure drawn from its frame (seaborn where it fits); plot_* = frame + draw + save
    samples      a dataset before training: class counts, a grid of labelled images
    run_figures  every figure of a run as PNG + CSV (save_run_figures), shown with captions
    style        the fixed Okabe-Ito category colours, sizes, saving

    preds = collect_region_predictions(teacher, student, dls, (1, 2, 4), max_items=512)
    region_map_frame(preds)             # the data of figure 1, one row per (image, region)
    plot_region_map(preds, path="fig1_region_map.png")   # writes fig1_region_map.png and .csv
    draw_category_shares(pd.read_csv("fig3a_category_shares.csv"))   # re-plot from a saved frame
    save_run_figures(teacher, student, dls, scales, cb, out_dir)    # all of them

Category ids and names follow `CATEGORIES` (the `RegionMasks` order).
"""
from .figures import (draw_agreement, draw_category_history, draw_category_shares, draw_per_class,
                      draw_region_logits, draw_region_map, plot_agreement, plot_category_history,
                      plot_category_shares, plot_per_class, plot_region_logits, plot_region_map)
from .frames import (agreement_frame, category_history_frame, category_shares_frame, per_class_frame,
                     region_logits_frame, region_map_frame)
from .predictions import RegionPredictions, collect_region_predictions, collect_run_predictions, region_labels
from .run_figures import FIGURE_CAPTIONS, FIGURE_FILES, save_run_figures, show_run_figure, show_run_figures
from .samples import class_counts, plot_samples
from .style import CATEGORIES, CATEGORY_COLORS, CATEGORY_LABELS, DPI, csv_path

__all__ = ["CATEGORIES", "CATEGORY_COLORS", "CATEGORY_LABELS", "DPI", "FIGURE_CAPTIONS", "FIGURE_FILES",
           "RegionPredictions", "agreement_frame", "category_history_frame", "category_shares_frame", "class_counts",
           "collect_region_predictions", "collect_run_predictions", "csv_path", "draw_agreement",
           "draw_category_history", "draw_category_shares", "draw_per_class", "draw_region_logits",
           "draw_region_map", "per_class_frame", "plot_agreement", "plot_category_history", "plot_category_shares",
           "plot_per_class", "plot_region_logits", "plot_region_map", "plot_samples", "region_labels",
           "region_logits_frame", "region_map_frame", "save_run_figures", "show_run_figure", "show_run_figures"]
