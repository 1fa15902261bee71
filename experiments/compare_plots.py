"""The comparison's plots, now experiments/harness/plots.py; this module keeps the old names."""

from experiments.harness import plots

METRIC_LABELS = plots.METRIC_LABELS
LOG_SPAN = plots.LOG_SPAN
styles = plots.styles
widths = plots.widths
held_on_grid = plots.held_on_grid
_study_curves = plots._study_curves  # pylint: disable=protected-access
plot_workload = plots.plot_workload
plot_profiles = plots.plot_profiles
plot_all = plots.plot_all
